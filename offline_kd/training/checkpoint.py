"""Self-contained checkpoints: model config, vocabulary and weights travel together, so `evaluate` and
`dump-teacher` rebuild the exact model from the file alone; training state (optimizer, scheduler, RNG) rides along
for `--resume`. Writes are atomic (temp file + os.replace): a kill mid-save never leaves a torn checkpoint."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from offline_kd.config import ModelConfig, build_dataclass
from offline_kd.data.vocab import Vocabulary
from offline_kd.errors import OfflineKDError
from offline_kd.models.bilstm import BiLSTMCTC


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise OfflineKDError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise OfflineKDError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from None
    for key in ("model_config", "model_state_dict", "vocab"):
        if key not in ckpt:
            raise OfflineKDError(f"{path}: not an offline-kd checkpoint (missing '{key}')")
    return ckpt


def model_from_checkpoint(path: str | Path, device="cpu") -> tuple[BiLSTMCTC, Vocabulary, dict]:
    ckpt = load_checkpoint(path)
    model = BiLSTMCTC(build_dataclass(ModelConfig, ckpt["model_config"]))
    model.load_state_dict(ckpt["model_state_dict"])
    model.to(device).eval()
    return model, Vocabulary.from_dict(ckpt["vocab"]), ckpt


def checkpoint_dev(ckpt: dict) -> dict | None:
    """A checkpoint's dev figures {wer, cer, epoch, corpus, split} (None if it was saved without a dev evaluation)."""
    dev = ckpt.get("dev") or {}
    if "wer" not in dev:
        return None
    data = (ckpt.get("config") or {}).get("data", {})
    return {"wer": float(dev["wer"]), "cer": float(dev["cer"]), "epoch": ckpt.get("epoch"),
            "corpus": data.get("corpus"), "split": data.get("dev_split")}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of the weights alone (stable across re-saves of the same model)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
