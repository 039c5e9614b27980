"""``dpddpm sample``: samples on a schedule, as a PNG grid or a float32 ``.npy`` array written batch by batch."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write
from . import inputs
from .commands import seed_of
from .errors import UsageError
from .inputs import check_output

#: the most samples a PNG grid takes (a 64 x 64 grid)
MAX_GRID = 4096


def cmd_sample(args: argparse.Namespace) -> int:
    from ..grids import save_grid
    from ..sampling import ddim_sample, sample

    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise UsageError(f"--out must end in .png or .npy, got {out.name}")
    if out.suffix == ".png" and args.n > MAX_GRID:
        raise UsageError(f"a PNG grid holds at most {MAX_GRID} samples, got -n {args.n}; write .npy instead")
    if args.ddim and args.variances:
        raise UsageError(
            "--ddim (eta = 0) is deterministic and uses no variances: leave out --variances, or --ddim for "
            "ancestral sampling with them"
        )
    check_output(out, example=f"samples{out.suffix}")
    model = inputs.load_model(args)
    if out.suffix == ".png" and model.data_shape[0] not in (1, 3):
        raise UsageError(
            f"PNG output needs images of 1 or 3 channels, the model makes {tuple(model.data_shape)}; use .npy"
        )
    _check_room(out, args.n * int(np.prod(model.data_shape)) * 4)
    sched = inputs.load_schedule(args, model)
    gen = torch.Generator().manual_seed(seed_of(args))
    draw = ddim_sample if args.ddim else sample
    batches = (  # --batch-size samples at a time, so memory stays bounded for any -n
        draw(model, sched, min(args.batch_size, args.n - a), gen).cpu() for a in range(0, args.n, args.batch_size)
    )
    if out.suffix == ".npy":
        _write_npy(out, (args.n, *model.data_shape), batches)
    else:
        save_grid(torch.cat(list(batches)), out, model.num_bins)
    print(f"wrote {args.n} samples ({len(sched)} steps{', DDIM' if args.ddim else ''}) to {out}")
    return 0


def _check_room(out: Path, nbytes: int) -> None:
    """Refuse before any work an output of ``nbytes`` bytes that cannot fit on its disk."""
    import shutil

    base = next(p for p in (out.absolute().parent, *out.absolute().parents) if p.exists())
    free = shutil.disk_usage(base).free
    if nbytes > free:
        raise UsageError(
            f"{out} would take {nbytes / 2**30:.1f} GiB but its disk has {free / 2**30:.1f} GiB free; lower -n "
            "or choose another path"
        )


def _write_npy(out: Path, shape: tuple[int, ...], batches: Iterable[torch.Tensor]) -> None:
    """Write float32 batches (B, *shape[1:]) one after the other as one ``.npy`` array of ``shape``, atomically."""

    def write(fh) -> None:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
        )
        for batch in batches:
            fh.write(np.ascontiguousarray(batch.numpy(), dtype="<f4").tobytes())

    atomic_write(out, write)
