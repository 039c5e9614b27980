"""``dpddpm merge``: partial cost matrices (row or data shards) into one file, refusing to lose any rows."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import claim_output, npz_path
from . import inputs
from .errors import UsageError
from .inputs import check_output

if TYPE_CHECKING:
    from ..costmatrix import CostMatrix

#: the advice for an OUT that looks like one of the parts (a shell glob put the first shard there)
FORGOT_OUT = "Did you forget the OUT argument? Usage: dpddpm merge OUT PART [PART ...]"


def cmd_merge(args: argparse.Namespace) -> int:
    from ..costmatrix import CostMatrix
    from ..merge import merge, rows_without_mse

    out = check_output(npz_path(args.out), example="costs.npz")
    for part in args.parts:  # e.g. OUT also matched by the parts' glob: the merge would replace an input
        if Path(part).resolve() == out.resolve():
            raise UsageError(
                f"the output {args.out} is also an input ({part}): merging would overwrite that shard. {FORGOT_OUT}"
            )
    with claim_output(out):  # the lock every command that writes a cost file takes: never two writers
        parts = [CostMatrix.load(inputs.require_file(p, "partial cost matrix")) for p in args.parts]
        merged = merge(parts, names=args.parts)  # refuses other models or data, and rows counted twice
        if args.allow_partial and out.exists():  # no completeness check would notice a shard given as OUT
            _refuse_losing_rows(out, merged)
        if not args.allow_partial:
            try:
                merged.require_complete()
            except ValueError as exc:  # `dpddpm merge c.rank*.npz` takes the first shard for OUT: say so
                raise ValueError(
                    f"{exc}. {out} exists and is not one of the parts. {FORGOT_OUT}" if out.exists() else str(exc)
                ) from None
        path = merged.save(out)
    print(f"wrote {path}: {merged!r}")
    lacking = rows_without_mse(merged)
    if merged.mse is not None and lacking:  # kept row by row: say which rows fit-variances cannot use
        print(
            f"note: {len(lacking)} row(s) (first: t = {lacking[:5]}) record no error of x^_0 (mse), since a part "
            "was written by an older dpddpm; fit-variances and --analytic need every row's, the rest is complete"
        )
    return 0


def _refuse_losing_rows(out: Path, merged: CostMatrix) -> None:
    """Refuse to replace an existing ``out`` that holds rows the merge lacks (e.g. a shard given as OUT).

    Replacing an earlier partial merge of the same shards, which only gain rows, is allowed: that is how the
    progress of a sharded run is checked.
    """
    from ..costmatrix import CostMatrix

    try:
        old = CostMatrix.load(out)
    except ValueError:
        raise FileExistsError(
            f"the output {out} exists and is not a cost matrix that a partial merge may replace. {FORGOT_OUT}"
        ) from None
    lost = np.flatnonzero(old.rows_done & ~merged.rows_done)
    if lost.size:
        raise FileExistsError(
            f"the output {out} already holds {lost.size} row(s) that the merge lacks (first: t = "
            f"{lost[:5].tolist()}): replacing it would lose them. {FORGOT_OUT}"
        )
