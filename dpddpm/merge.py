"""Merging partial cost matrices: row shards of one data set, or data shards that each cover the same rows.

Each entry's mean and standard error are turned back into (count, mean, M2) and pooled with
:func:`dpddpm.stats.pool`, so the merged standard errors are those of one run over all samples, up to round-off.
Nothing is mixed: the parts must share the model and its settings (:data:`~dpddpm.runinfo.MODEL_FIELDS`), and
no sample may count twice.

- Row shards of one data set must also agree on what replaying their noise needs (:data:`REPLAY_NOISE_FIELDS`:
  the seed and the noise generator's device). A part that does not record such a field (an older file) still
  merges, but the merged file then records the field as unknown, so an in-sample replay is refused instead of
  using the wrong noise.
- Data shards must not share an image. Files record one hash per image (``image_hashes``); parts computed by
  dpddpm (they record a weights fingerprint) without them, i.e. files from before these hashes, cannot be checked
  for overlap and are refused as data shards (as row shards of one data set they still merge). Hand-built
  matrices (they record no weights fingerprint) are merged on the caller's word.
- The errors of x^_0 (``mse``) are kept row by row: a row whose parts all record it keeps it, a row with a part
  that does not (a file from before ``mse`` existed) gets NaN there; :func:`rows_without_mse` names them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .costfile import valid_edges
from .costmatrix import CostMatrix
from .runinfo import MODEL_FIELDS, RunInfo
from .stats import Pool

#: what replaying a row's noise depends on besides the data: row shards of one data set must agree on it
REPLAY_NOISE_FIELDS = ("seed", "noise_device")


def merge(parts: Sequence[CostMatrix], names: Sequence[str] | None = None) -> CostMatrix:
    """Combine partial matrices computed on disjoint rows of the same data, or on disjoint data.

    Public as :func:`dpddpm.merge_costs`; ``dpddpm merge`` runs it on files.

    Args:
        parts: the partial matrices.
        names: how to name each part in error messages (e.g. its file); default "part 0", "part 1", ...

    Raises:
        ValueError: the parts come from different models or settings (names the field that differs); row shards
            disagree on their seed or noise device; two parts on the same data share a row (their samples would
            count twice; this includes merging a matrix with itself); data shards share an image, or cannot be
            checked for shared images; or parts on different data cover different rows (the merged rows would
            each rest on other images).
    """
    if not parts:
        raise ValueError("nothing to merge")
    names = [f"part {i}" for i in range(len(parts))] if names is None else [str(n) for n in names]
    if len(names) != len(parts):
        raise ValueError(f"{len(names)} names for {len(parts)} parts")
    for name, p in zip(names, parts):
        if not isinstance(p, CostMatrix):
            raise TypeError(f"{name} is not a CostMatrix but a {type(p).__name__}")
    _check_compatible(parts, names)
    if len(parts) == 1:  # nothing to pool (a hand-built matrix has no counts to pool with)
        return _copy(parts[0])
    data_ids = [_data_id(p) for p in parts]
    same_data = len(set(data_ids)) == 1
    if same_data:
        _check_replay_fields(parts, names)
    else:
        _check_images(parts, names)
    _check_rows(parts, names, same_data)
    T = parts[0].T
    kl, decoder = Pool(), Pool()
    for p in parts:
        kl.add(p.kl, p.stderr, p.counts[:, None] * valid_edges(T))
        decoder.add(p.decoder, p.decoder_stderr, p.counts[1] * (np.arange(T + 1) >= 2))
    (kl_mean, kl_se), (dec_mean, dec_se) = kl.result(), decoder.result()
    mse_mean, mse_se = _pooled_mse(parts)
    prior, prior_se, info, hashes = _merged_data(parts, None if same_data else data_ids)
    return CostMatrix(
        kl=kl_mean,
        decoder=dec_mean,
        prior=prior,
        stderr=kl_se,
        decoder_stderr=dec_se,
        prior_stderr=prior_se,
        counts=np.sum([p.counts for p in parts], axis=0),
        mse=mse_mean,
        mse_stderr=mse_se,
        info=info,
        image_hashes=hashes,
    )


def _merged_data(
    parts: Sequence[CostMatrix], data_ids: list[str] | None
) -> tuple[np.ndarray, np.ndarray | None, RunInfo, np.ndarray | None]:
    """(prior, its standard errors, run info, image hashes) of the merged matrix; ``data_ids``: None for row
    shards of one data set, else the data of each part (data shards)."""
    agreed = {k: _agreed(parts, k) for k in REPLAY_NOISE_FIELDS}  # None (unknown) where the parts differ or lack it
    if data_ids is None:  # the prior is exact given the data: row shards share it
        return parts[0].prior, parts[0].prior_stderr, parts[0].info.replace(**agreed), parts[0].image_hashes
    prior, prior_se = _pooled_prior(parts)
    info = parts[0].info.replace(
        N=int(sum(p.info.N or 0 for p in parts)) or None,
        data_fingerprint=None,  # no single data set (nor noise stream) any more
        data_shards=tuple(data_ids),
        **agreed,
    )
    with_hashes = all(p.image_hashes is not None for p in parts)
    hashes = np.concatenate([p.image_hashes for p in parts]) if with_hashes else None
    if hashes is not None and info.N != len(hashes):
        info = info.replace(N=len(hashes))
    return prior, prior_se, info, hashes


def rows_without_mse(costs: CostMatrix) -> list[int]:
    """The computed rows t whose error of x^_0 is not recorded (NaN, or no ``mse`` at all)."""
    done = np.flatnonzero(costs.rows_done)
    if costs.mse is None:
        return [int(t) for t in done]
    return [int(t) for t in done if not np.isfinite(costs.mse[t])]


def _copy(costs: CostMatrix) -> CostMatrix:
    """An independent copy of one matrix."""
    return CostMatrix(
        kl=costs.kl,
        decoder=costs.decoder,
        prior=costs.prior,
        stderr=costs.stderr,
        decoder_stderr=costs.decoder_stderr,
        prior_stderr=costs.prior_stderr,
        counts=costs.counts,
        mse=costs.mse,
        mse_stderr=costs.mse_stderr,
        info=costs.info,
        image_hashes=costs.image_hashes,
    )


def _pooled_mse(parts: Sequence[CostMatrix]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The errors of x^_0, pooled row by row; NaN in a row that some part computed without recording it."""
    if all(p.mse is None for p in parts):
        return None, None
    pool, known = Pool(), np.ones(parts[0].T + 1, dtype=bool)
    for p in parts:
        counts = np.maximum(p.counts, 0)
        if p.mse is None:
            known &= counts == 0
            continue
        has = np.isfinite(p.mse)
        known &= has | (counts == 0)
        se = None if p.mse_stderr is None else np.nan_to_num(p.mse_stderr)
        pool.add(np.nan_to_num(p.mse), se, np.where(has, counts, 0))
    mean, se = pool.result()
    mean, se = np.where(known, mean, np.nan), np.where(known, se, np.nan)
    return mean, se


def _agreed(parts: Sequence[CostMatrix], field: str):
    """The value of ``field`` if every part records the same one, else None (unknown)."""
    values = {getattr(p.info, field) for p in parts}
    return values.pop() if len(values) == 1 else None


def _check_replay_fields(parts: Sequence[CostMatrix], names: list[str]) -> None:
    """Row shards of one data set must have drawn their noise alike: refuse two recorded values that differ."""
    for field in REPLAY_NOISE_FIELDS:
        recorded = [(n, getattr(p.info, field)) for n, p in zip(names, parts) if getattr(p.info, field) is not None]
        if len({v for _, v in recorded}) > 1:
            (n0, v0), (n1, v1) = next((a, b) for a in recorded for b in recorded if a[1] != b[1])
            raise ValueError(
                f"the parts were computed with different {field} ({v0!r} in {n0}, {v1!r} in {n1}): their rows "
                f"rest on different noise, and replaying the merged matrix would use the wrong one; compute "
                f"every shard with the same --seed on the same kind of device"
            )


def _check_images(parts: Sequence[CostMatrix], names: list[str]) -> None:
    """Data shards must share no image: compare their per-image hashes."""
    for name, p in zip(names, parts):
        computed = p.info.weights_fingerprint is not None  # only a dpddpm run records the weights
        if p.image_hashes is None and computed:
            raise ValueError(
                f"{name} records no per-image hashes (it was written by an older dpddpm), so merging it with "
                "other data shards cannot be checked for images counted twice; recompute it with this version "
                "(row shards of one data set still merge)"
            )
    seen: dict[int, str] = {}
    for name, p in zip(names, parts):
        if p.image_hashes is None:
            continue
        own = np.unique(p.image_hashes)
        shared = [seen[int(h)] for h in own if int(h) in seen]
        if shared:
            raise ValueError(
                f"{name} shares {len(shared)} image(s) with {shared[0]}: merging would count them twice "
                "(overlapping data shards, e.g. --limit 4 and --limit 2); merge shards of disjoint images"
            )
        seen.update((int(h), name) for h in own)


def _check_compatible(parts: Sequence[CostMatrix], names: list[str]) -> None:
    """Refuse parts of another T, parts without sample counts, and parts made by another model or setting."""
    first: RunInfo = parts[0].info
    for name, p in zip(names, parts):
        if p.T != parts[0].T:
            raise ValueError(
                f"cannot merge cost matrices with different T ({parts[0].T} in {names[0]}, {p.T} in {name})"
            )
        if (p.counts < 0).any() and len(parts) > 1:
            raise ValueError(f"cannot merge {name}: it carries no sample counts")
        wrong = first.differences(p.info, MODEL_FIELDS)
        if wrong:
            unrecorded = [k for k in wrong if getattr(first, k) is None or getattr(p.info, k) is None]
            why = (
                "one of them does not record it (a hand-built file or one from an older dpddpm), so they cannot "
                "be checked to come from one model; recompute it with this version"
                if unrecorded
                else "they come from another model or setting"
            )
            raise ValueError(
                f"cannot merge {name} with {names[0]}: {why} ({first.describe(p.info, wrong, names[0], name)})"
            )


def _check_rows(parts: Sequence[CostMatrix], names: list[str], same_data: bool) -> None:
    """Refuse rows that would count samples twice, or merged rows that would rest on different images."""
    done = np.array([p.rows_done for p in parts])
    if same_data:
        overlap = done.sum(axis=0) > 1
        if overlap.any():
            t = int(np.flatnonzero(overlap)[0])
            sharing = [n for n, d in zip(names, done[:, t]) if d]
            raise ValueError(
                f"the parts share {int(overlap.sum())} row(s) (e.g. t = {t}, in {', '.join(sharing)}) computed on "
                f"the same data: merging would count those samples twice; merge each shard once"
            )
    elif not (done == done[0]).all():
        raise ValueError(
            "the parts were computed on different data but cover different rows: merged rows would each rest "
            "on other images; merge data shards only when each covers the same rows (e.g. all of them)"
        )


def _pooled_prior(parts: Sequence[CostMatrix]) -> tuple[np.ndarray, np.ndarray]:
    """The prior over the union of data shards: each shard's exact prior weighted by its own N."""
    pool = Pool()
    for p in parts:
        n_data = float(p.info.N if p.info.N is not None else max(p.counts.max(), 1))
        pool.add(p.prior, p.prior_stderr, np.full(p.T + 1, n_data))
    return pool.result()


def _data_id(costs: CostMatrix) -> str:
    """What identifies a matrix's data: its fingerprint, or (for hand-built matrices) its prior vector."""
    fp = costs.info.data_fingerprint
    if fp:
        return str(fp)
    if costs.info.data_shards:
        return "shards:" + "+".join(costs.info.data_shards)
    return "prior:" + hashlib.sha256(np.nan_to_num(costs.prior, nan=-1.0).tobytes()).hexdigest()[:16]
