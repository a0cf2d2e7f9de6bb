"""A Hugging Face model directory as `save_pretrained` writes it, read without running code: its JSON files, its
safetensors weights (pickled weights refused), its preprocessing, and a model id looked up in the local Hugging
Face cache (never downloaded). Shared by the Hugging Face teacher (teachers/huggingface.py) and the `hf` student
that initialises from one (models/hf.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from offline_kd.errors import OfflineKDError


def _json(path: Path, where: str, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise OfflineKDError(f"{where}: {path.parent} has no {path.name}")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OfflineKDError(f"{where}: {path} is not JSON ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(data, dict):
        raise OfflineKDError(f"{where}: {path} must hold a JSON object")
    return data


def weight_files(d: Path, where: str) -> list[Path]:
    if (d / "model.safetensors").is_file():
        return [d / "model.safetensors"]
    index = d / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_json(index, where).get("weight_map", {}).values()))
        missing = [s for s in shards if not (d / s).is_file()]
        if not shards or missing:
            raise OfflineKDError(f"{where}: {index} names weight shards that are missing ({', '.join(missing[:3])})")
        return [d / s for s in shards]
    if any(d.glob("*.bin")):
        raise OfflineKDError(f"{where}: {d} has only pickled weights (*.bin); offline-kd loads safetensors only "
                             f"(loading a file must not run code): convert with save_pretrained(..., "
                             f"safe_serialization=True)")
    raise OfflineKDError(f"{where}: {d} has no weights (model.safetensors)")


def preprocessing(d: Path, where: str) -> dict:
    """The feature extractor's settings (sampling_rate, do_normalize): transformers 5 saves them in
    `processor_config.json` under "feature_extractor", older versions in `preprocessor_config.json`; the newer file
    is read first."""
    proc = _json(d / "processor_config.json", where, False)
    if proc:
        inner = proc.get("feature_extractor", proc)
        if not isinstance(inner, dict):
            raise OfflineKDError(f"{where}: {d}/processor_config.json: 'feature_extractor' must be a JSON object")
        if "sampling_rate" in inner or "do_normalize" in inner:
            return inner
    return _json(d / "preprocessor_config.json", where, False)


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_model_dir(value: str, where: str = "dump.teacher") -> Path:
    """A local directory as it is; a model id (`owner/name[@revision]`) from the local Hugging Face cache, never
    downloaded. A one-line error says where it looked."""
    d = Path(value)
    if d.is_dir():
        return d
    repo, _, revision = value.partition("@")
    looks_like_id = repo.count("/") <= 1 and not repo.startswith((".", "/", "~")) and all(repo.split("/"))
    if not looks_like_id:
        raise OfflineKDError(f"{where}.huggingface: directory not found: {d}")
    cache = _hub_cache()
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise OfflineKDError(f"{where}.huggingface: {value} is not a directory, and reading a model id from the "
                             f"Hugging Face cache needs transformers: pip install 'offline-kd[hf]'") from None
    try:
        return Path(snapshot_download(repo, revision=revision or None, cache_dir=str(cache), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        kind = type(exc).__name__
        raise OfflineKDError(f"{where}.huggingface: {value} is neither a local directory nor a model in the local "
                             f"Hugging Face cache (looked in {cache / ('models--' + repo.replace('/', '--'))}; "
                             f"{kind}); nothing is downloaded: run `huggingface-cli download {repo}` where there is "
                             f"a network (set HF_HUB_CACHE to where it went), or give the model's directory") from None
