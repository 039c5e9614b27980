"""Merging partial cost matrices: row shards of one data set, or data shards that each cover the same rows.

Each entry's mean and standard error are turned back into (count, mean, M2) and pooled with
:func:`dpddpm.stats.pool`, so the merged standard errors are those of one run over all samples, up to round-off.
Nothing is mixed: the parts must share the model and its settings (:data:`~dpddpm.runinfo.MODEL_FIELDS`), and
no sample may count twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .costmatrix import CostMatrix, valid_edges
from .runinfo import MODEL_FIELDS, RunInfo
from .stats import Pool


def merge(parts: Sequence[CostMatrix], names: Sequence[str] | None = None) -> CostMatrix:
    """Combine partial matrices computed on disjoint rows of the same data, or on disjoint data.

    Args:
        parts: the partial matrices.
        names: how to name each part in error messages (e.g. its file); default "part 0", "part 1", ...

    Raises:
        ValueError: the parts come from different models or settings (names the field that differs); two
            parts on the same data share a row (their samples would count twice; this includes merging a
            matrix with itself); or parts on different data cover different rows (the merged rows would
            each rest on other images).
    """
    if not parts:
        raise ValueError("nothing to merge")
    names = [f"part {i}" for i in range(len(parts))] if names is None else [str(n) for n in names]
    _check_compatible(parts, names)
    data_ids = [_data_id(p) for p in parts]
    same_data = len(set(data_ids)) == 1
    _check_rows(parts, names, same_data)
    T = parts[0].T
    kl, decoder, mse = Pool(), Pool(), Pool()
    with_mse = all(p.mse is not None for p in parts)
    for p in parts:
        kl.add(p.kl, p.stderr, p.counts[:, None] * valid_edges(T))
        decoder.add(p.decoder, p.decoder_stderr, p.counts[1] * (np.arange(T + 1) >= 2))
        if with_mse:  # NaN where a part has not computed a row: its count there is 0
            mse.add(np.nan_to_num(p.mse), np.nan_to_num(p.mse_stderr), np.maximum(p.counts, 0))
    (kl_mean, kl_se), (dec_mean, dec_se) = kl.result(), decoder.result()
    mse_mean, mse_se = mse.result() if with_mse else (None, None)
    counts = np.sum([p.counts for p in parts], axis=0)
    if same_data:  # the prior is exact given the data: row shards share it
        prior, prior_se, info = parts[0].prior, parts[0].prior_stderr, parts[0].info
    else:
        prior, prior_se = _pooled_prior(parts)
        info = parts[0].info.replace(
            N=int(sum(p.info.N or 0 for p in parts)),
            data_fingerprint=None,  # no single data set (nor noise stream) any more
            data_shards=tuple(data_ids),
        )
    return CostMatrix(
        kl=kl_mean,
        decoder=dec_mean,
        prior=prior,
        stderr=kl_se,
        decoder_stderr=dec_se,
        prior_stderr=prior_se,
        counts=counts,
        mse=mse_mean,
        mse_stderr=mse_se,
        info=info,
    )


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
            raise ValueError(
                f"{name} comes from another model or setting than {names[0]} "
                f"({first.describe(p.info, wrong, names[0], name)})"
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
    return "prior:" + hashlib.sha256(np.nan_to_num(costs.prior, nan=-1.0).tobytes()).hexdigest()[:16]
