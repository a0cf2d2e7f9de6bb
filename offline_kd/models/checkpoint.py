"""Self-contained checkpoints: model config, vocabulary and weights travel together, so `evaluate` and
`dump-teacher` rebuild the exact model from the file alone; training state (optimizer, scheduler, RNG) rides along
for `--resume`. Writes are atomic (temp file + os.replace): a kill mid-save never leaves a torn checkpoint.

Loading never runs code: checkpoints are read with `torch.load(weights_only=True)`, which unpickles tensors and
plain containers only. Everything a checkpoint holds is of those kinds (the numpy RNG state is stored as a plain
list). Checkpoints written before that stored the numpy state as an array: the numpy array type (and nothing
else) is allowed for them. A file that asks for any other Python object is refused, naming it."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from offline_kd.data.vocab import Vocabulary
from offline_kd.errors import OfflineKDError
from offline_kd.models.interface import DEFAULT_MODEL_TYPE, CTCModel, build_from_description


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


#: the only Python objects (beyond tensors and plain containers) a checkpoint may ask for: numpy arrays, as the
#: numpy RNG state of checkpoints written before it was stored as a list. Building an array runs no user code.
_LEGACY_SAFE_GLOBALS = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint's contents, loaded as weights only (never runs code from the file); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise OfflineKDError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_LEGACY_SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # "pickle protocol 4" of a plain pickle: refused below
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:    # asks for a Python object: refused before anything of it runs
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - a plain pickle, not a torch zip file
            unsafe = []
        what = f"Python objects ({', '.join(unsafe[:5])})" if unsafe else "Python objects, not weights"
        raise OfflineKDError(f"{path}: refused: the file asks for {what}; offline-kd loads weights only, so a "
                             f"checkpoint can never run code (re-save it with offline-kd, or convert it to "
                             f"tensors and plain containers)") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        first = (str(exc).splitlines() or [""])[0][:200]
        raise OfflineKDError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {first})") from None
    if not isinstance(ckpt, dict):
        raise OfflineKDError(f"{path}: not an offline-kd checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    for key in ("model_config", "model_state_dict", "vocab"):
        if key not in ckpt:
            raise OfflineKDError(f"{path}: not an offline-kd checkpoint (missing '{key}')")
    return ckpt


def checkpoint_model_type(ckpt: dict) -> str:
    """The registered model type a checkpoint holds (checkpoints written before types were recorded: bilstm)."""
    return str(ckpt.get("model_type", DEFAULT_MODEL_TYPE))


def model_from_checkpoint(path: str | Path, device="cpu") -> tuple[CTCModel, Vocabulary, dict]:
    """The model and vocabulary a checkpoint describes; a checkpoint that loads but is wrong (a config that does
    not build, weights of other shapes, missing or extra weights, a vocabulary without tokens) is a one-line
    error naming the file."""
    ckpt = load_checkpoint(path)
    try:
        model = build_from_description(checkpoint_model_type(ckpt), ckpt["model_config"])
    except OfflineKDError as exc:
        raise OfflineKDError(f"{path}: {exc}") from None
    state = ckpt["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfflineKDError(f"{path}: model_state_dict is not a mapping of names to tensors")
    problems = _state_dict_problems(model, state)
    if problems:
        raise OfflineKDError(f"{path}: the weights do not fit the model its model_config describes: "
                             f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}")
    model.load_state_dict(state)
    model.to(device).eval()
    missing = [k for k in ("tokens", "tokenizer") if k not in (ckpt["vocab"] if isinstance(ckpt["vocab"], dict) else {})]
    if missing:
        raise OfflineKDError(f"{path}: vocab lacks {', '.join(repr(k) for k in missing)} (not an offline-kd vocabulary)")
    try:
        vocab = Vocabulary.from_dict(ckpt["vocab"])
    except OfflineKDError as exc:
        raise OfflineKDError(f"{path}: vocab: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a vocabulary record of the wrong shape
        raise OfflineKDError(f"{path}: vocab is not a vocabulary ({exc.__class__.__name__}: {exc})") from None
    if len(vocab) != model.num_classes:
        raise OfflineKDError(f"{path}: the vocabulary has {len(vocab)} classes, the model {model.num_classes}")
    return model, vocab, ckpt


def _state_dict_problems(model: torch.nn.Module, state: dict) -> list[str]:
    """What keeps `state` from loading into `model` strictly: missing, unexpected and mis-shaped weights."""
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [f"{k} has shape {tuple(state[k].shape)}, the model needs {tuple(v.shape)}"
                 for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if len(problems) > 3 and all(p.startswith("missing") for p in problems) and not state:
        return ["the state_dict is empty"]
    return problems


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
    """The RNG states as tensors and plain containers (what a weights-only load reads)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, keys.astype(np.int64).tolist(), int(pos), int(has_gauss), float(cached)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
