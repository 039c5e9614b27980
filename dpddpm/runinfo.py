"""What a cost matrix was computed from: model settings, data, noise. Saved in its file, checked before mixing.

A resume, a merge and an in-sample replay must never combine rows made by another network, on other images or
with other noise. :class:`RunInfo` records exactly what decides that, with types, and says which fields two
runs disagree on (:meth:`RunInfo.differences`). Every field is optional: ``None`` means "not recorded" (a
hand-built matrix, a file written by an older dpddpm, or no single value after merging data shards).
In a file it is one JSON object (the ``meta`` entry of the ``.npz``), with any extra user keys beside it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .validation import MAX_SEED, check_int
from .variances import VARIANCE_KINDS

#: the fields that identify the model and how it was run: parts of one merge must agree on all of them
MODEL_FIELDS = ("variance", "num_bins", "clip_denoised", "weights_fingerprint", "autocast")
#: the model, the data and the noise: what a resumed run must share with its checkpoint
RUN_FIELDS = (
    "T",
    "variance",
    "num_bins",
    "clip_denoised",
    "seed",
    "N",
    "data_fingerprint",
    "weights_fingerprint",
    "autocast",
    "noise_device",
)
#: what in_sample_elbo needs recorded to replay a matrix's noise (autocast may be None: no autocast)
REPLAY_FIELDS = tuple(f for f in RUN_FIELDS if f not in ("T", "autocast"))


@dataclass(frozen=True)
class RunInfo:
    """The run behind a cost matrix.

    Attributes:
        T: the model's number of steps.
        variance: ``"fixed_small"``, ``"fixed_large"`` or ``"learned_range"``.
        num_bins: data levels in [-1, 1] (256 for 8-bit images).
        clip_denoised: whether x̂_0 was clipped to [-1, 1].
        seed: the noise seed; row t's noise comes from ``row_generator(seed, t)``.
        N: the number of data points.
        data_fingerprint: hash of the data (:func:`dpddpm.fingerprint.data_fingerprint`).
        weights_fingerprint: hash of the network and schedule (:func:`dpddpm.fingerprint.model_fingerprint`).
        autocast: ``"bf16"``, ``"fp16"`` or None (full precision; also None when not recorded).
        noise_device: the device type whose generator drew the noise (``"cpu"``, ``"cuda"``).
        data_shards: after merging data shards, each shard's data fingerprint (``data_fingerprint`` is None).
        extra: any other JSON-able keys a user stored with the matrix; saved and loaded unchanged.
    """

    T: int | None = None
    variance: str | None = None
    num_bins: int | None = None
    clip_denoised: bool | None = None
    seed: int | None = None
    N: int | None = None
    data_fingerprint: str | None = None
    weights_fingerprint: str | None = None
    autocast: str | None = None
    noise_device: str | None = None
    data_shards: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in _FIELD_TYPES:  # numpy ints, JSON lists...: stored as the declared type, after a strict check
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _checked(name, value))
        if not isinstance(self.extra, Mapping):
            raise TypeError(f"extra must be a mapping, got {type(self.extra).__name__}")
        clash = sorted(set(self.extra) & set(_FIELD_TYPES))
        if clash:
            raise ValueError(f"extra keys {clash} are RunInfo fields; pass them as fields")
        object.__setattr__(self, "extra", types.MappingProxyType(dict(self.extra)))

    # ------------------------------------------------------------------ comparisons
    def differences(self, other: RunInfo, fields: Iterable[str] = RUN_FIELDS) -> list[str]:
        """The names among ``fields`` whose values differ (None, "not recorded", differs from any value)."""
        return [name for name in fields if getattr(self, name) != getattr(other, name)]

    def missing(self, fields: Iterable[str]) -> list[str]:
        """The names among ``fields`` that this info does not record (None)."""
        return [name for name in fields if getattr(self, name) is None]

    def describe(self, other: RunInfo, fields: Iterable[str], here: str, there: str) -> str:
        """``"seed: 0 in <here>, 1 in <there>; ..."`` for the given fields ("not recorded" for None)."""

        def show(value: Any) -> str:
            return "not recorded" if value is None else repr(value)

        return "; ".join(
            f"{name}: {show(getattr(self, name))} in {here}, {show(getattr(other, name))} in {there}" for name in fields
        )

    # ------------------------------------------------------------------ dict and JSON forms
    def as_dict(self) -> dict[str, Any]:
        """The recorded fields (None left out) and the extra keys, as plain JSON-able values."""
        out = {name: getattr(self, name) for name in _FIELD_TYPES if getattr(self, name) is not None}
        if self.data_shards is not None:
            out["data_shards"] = list(self.data_shards)
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> RunInfo:
        """The inverse of :meth:`as_dict`: known keys become fields (missing ones None), the rest ``extra``.

        Raises:
            TypeError, ValueError: a field of the wrong type (``"false"`` for a bool, 2.7 for a count) or out of
                range; nothing is converted silently.
        """
        if not isinstance(meta, Mapping):
            raise TypeError(f"run info must be a JSON object, got {type(meta).__name__}")
        known = {k: v for k, v in meta.items() if k in _FIELD_TYPES}
        return cls(**known, extra={k: v for k, v in meta.items() if k not in _FIELD_TYPES})

    def to_json(self, **more: Any) -> str:
        """One JSON object: :meth:`as_dict` plus ``more`` (e.g. the file format's version)."""
        return json.dumps({**self.as_dict(), **more})

    @classmethod
    def from_json(cls, text: str) -> RunInfo:
        """Read :meth:`to_json`'s output (``format_version`` and other file keys must be popped first)."""
        return cls.from_dict(json.loads(text))

    def __reduce__(self):  # pickle and deepcopy through the dict form (a mappingproxy cannot be pickled)
        return RunInfo.from_dict, (self.as_dict(),)

    def replace(self, **changes: Any) -> RunInfo:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _declared_types() -> dict[str, type]:
    """Each field's type without its ``| None`` (``tuple`` for data_shards), from the annotations."""
    hints = typing.get_type_hints(RunInfo)
    out = {}
    for f in dataclasses.fields(RunInfo):
        if f.name != "extra":
            kind = next(a for a in typing.get_args(hints[f.name]) if a is not type(None))
            out[f.name] = typing.get_origin(kind) or kind
    return out


_FIELD_TYPES = _declared_types()

#: the values a field may take beyond its type: (low, high) for ints, the allowed strings for choices
_INT_RANGES = {"T": (1, 2**31), "num_bins": (2, 2**31), "seed": (0, MAX_SEED), "N": (1, 2**63 - 1)}
_CHOICES = {
    "variance": VARIANCE_KINDS,
    "autocast": ("bf16", "fp16"),
}


def _checked(name: str, value: Any) -> Any:
    """``value`` as field ``name``'s declared type, after checking that it already is one (and in range)."""
    kind = _FIELD_TYPES[name]
    if kind is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"run info {name!r} must be true or false, got {value!r}")
        return bool(value)
    if kind is int:
        low, high = _INT_RANGES.get(name, (None, None))
        return check_int(value, f"run info {name!r}", low=low, high=high)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"run info {name!r} must be a string, got {value!r}")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"run info {name!r} must be one of {_CHOICES[name]}, got {value!r}")
        return value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):  # data_shards
        raise TypeError(f"run info {name!r} must be a list of strings, got {value!r}")
    return tuple(value)
