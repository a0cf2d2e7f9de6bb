"""Codecs by (field, name): `register_codec` adds one, `codec_from_spec` rebuilds one from a stored or configured
spec, `load_state`/`state_arrays` move fitted state between a codec and the cache, generically."""

from __future__ import annotations

import numpy as np

from offline_kd.errors import OfflineKDError

FIELDS = ("log_probs", "hidden")
_REGISTRY: dict[str, dict[str, type]] = {f: {} for f in FIELDS}


def register_codec(cls: type) -> type:
    """Class decorator: make `cls` available under (cls.field, cls.name)."""
    if cls.field not in _REGISTRY:
        raise TypeError(f"{cls.__name__}.field must be one of {FIELDS}, got {cls.field!r}")
    if cls.name in _REGISTRY[cls.field]:
        raise TypeError(f"a {cls.field} codec named {cls.name!r} is already registered")
    _REGISTRY[cls.field][cls.name] = cls
    return cls


def registered(field: str) -> dict[str, type]:
    return dict(_REGISTRY[field])


def codec_from_spec(field: str, spec: dict, where: str | None = None):
    """A codec from its spec ({"name": ..., settings}); unknown names and settings are one-line errors."""
    spec = dict(spec)
    name = spec.pop("name", None)
    where = where or f"codecs.{field}"
    if name not in _REGISTRY[field]:
        raise OfflineKDError(f"{where}: unknown codec '{name}' ({' | '.join(_REGISTRY[field])})")
    cls = _REGISTRY[field][name]
    try:
        return cls.from_dict(spec)
    except TypeError as exc:
        raise OfflineKDError(f"{where}: bad settings for codec '{name}' ({exc})") from None


def log_prob_codec(spec: dict):
    return codec_from_spec("log_probs", spec)


def hidden_codec(spec: dict):
    return codec_from_spec("hidden", spec)


def state_arrays(codec, field_path: str) -> dict[str, np.ndarray]:
    """{cache path: array} of a fitted codec's state, to be stored with the cache."""
    paths = codec.state_paths(field_path)
    return {paths[k]: np.asarray(v) for k, v in codec.state().items()}


def load_state(codec, field_path: str, group):
    """The codec with the state stored at its paths in `group` (keys an old cache lacks are left out)."""
    paths = codec.state_paths(field_path)
    present = {k: group[p][:] for k, p in paths.items() if p in group}
    return codec.with_state(present) if present else codec
