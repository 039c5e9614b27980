"""The subcommands: each checks its outputs, loads what its options name (:mod:`.inputs`), calls the library
and prints what it did. ``args.rows_file`` tells the error report where a stopped cost-matrix run left its rows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..files import atomic_write, claim_output, npz_path, write_json
from ..sharding import Shard
from . import inputs
from .errors import UsageError
from .inputs import check_output


def _times(sched: np.ndarray) -> list[int]:
    return [int(t) for t in sched]


def seed_of(args: argparse.Namespace) -> int:
    """--seed, or 0 when it was not given."""
    return 0 if args.seed is None else args.seed


def shard_of(args: argparse.Namespace) -> Shard:
    """--shard-index with --num-shards, else torchrun's RANK and WORLD_SIZE, else the single shard."""
    if args.shard_index is None and args.num_shards is None:
        return Shard.from_environ()
    if args.shard_index is None or args.num_shards is None:
        raise UsageError("--shard-index and --num-shards go together")
    return Shard(args.shard_index, args.num_shards)


def cmd_costs(args: argparse.Namespace) -> int:
    from ..costs import cost_matrix

    shard = shard_of(args)
    device = shard.device(inputs.device(args.device))
    check_output(args.out, example="costs.npz")  # a folder given as --out, then the file written (.npz added)
    out = check_output(npz_path(shard.output(args.out)), example="costs.npz")
    args.device = str(device)
    args.rows_file = out
    model = inputs.load_model(args)
    data = inputs.check_data_fits(inputs.load_data(args), model, args)
    costs = cost_matrix(
        model,
        data,
        batch_size=args.batch_size,
        device=device,
        progress=not args.quiet,
        seed=seed_of(args),
        rows=shard.rows(model.T),
        checkpoint=out,
        resume=args.resume,
        save_every=args.save_every,
        autocast=args.autocast,
    )
    print(f"wrote {out}: {costs!r}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ..costmatrix import CostMatrix

    out = check_output(npz_path(args.out), example="costs.npz")
    forgot = "Did you forget the OUT argument? Usage: dpddpm merge OUT PART [PART ...]"
    for part in args.parts:  # e.g. OUT also matched by the parts' glob: the merge would replace an input
        if Path(part).resolve() == out.resolve():
            raise UsageError(
                f"the output {args.out} is also an input ({part}): merging would overwrite that shard. {forgot}"
            )
    from ..merge import rows_without_mse

    with claim_output(out):  # the lock every command that writes a cost file takes: never two writers
        parts = [CostMatrix.load(inputs.require_file(p, "partial cost matrix")) for p in args.parts]
        merged = CostMatrix.merge(parts, names=args.parts)  # refuses other models or data, and rows counted twice
        if args.allow_partial and out.exists():  # no completeness check would notice a shard given as OUT
            _refuse_losing_rows(out, merged, forgot)
        if not args.allow_partial:
            try:
                merged.require_complete()
            except ValueError as exc:  # `dpddpm merge c.rank*.npz` takes the first shard for OUT: say so
                raise ValueError(
                    f"{exc}. {out} exists and is not one of the parts. {forgot}" if out.exists() else str(exc)
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


def _refuse_losing_rows(out: Path, merged, forgot: str) -> None:
    """Refuse to replace an existing ``out`` that holds rows the merge lacks (e.g. a shard given as OUT).

    Replacing an earlier partial merge of the same shards, which only gain rows, is allowed: that is how the
    progress of a sharded run is checked.
    """
    from ..costmatrix import CostMatrix

    try:
        old = CostMatrix.load(out)
    except ValueError:
        raise FileExistsError(
            f"the output {out} exists and is not a cost matrix that a partial merge may replace. {forgot}"
        ) from None
    lost = np.flatnonzero(old.rows_done & ~merged.rows_done)
    if lost.size:
        raise FileExistsError(
            f"the output {out} already holds {lost.size} row(s) that the merge lacks (first: t = "
            f"{lost[:5].tolist()}): replacing it would lose them. {forgot}"
        )


def cmd_schedule(args: argparse.Namespace) -> int:
    if args.json:
        check_output(args.json, example="schedule.json")
    costs = inputs.load_costs(args.costs)
    sched, bpd = inputs.best_schedule(costs, args.steps, args.start, args.costs)
    K = len(sched)
    print(f"optimal {K}-step schedule (T = {costs.T}, start = {args.start}): {bpd:.6f} bits/dim in-sample")
    print(" ".join(map(str, _times(sched))))
    print(
        f"(a per-image standard error needs the model and the matrix's data: dpddpm elbo MODEL DATA "
        f"--costs {args.costs} --steps {K} --in-sample)"
    )
    if args.json:
        doc = {
            "T": costs.T,
            "K": K,
            "start": args.start,
            "bpd": bpd,
            "schedule": _times(sched),
            "dpddpm_version": __version__,
        }
        write_json(args.json, doc)
    return 0


def cmd_elbo(args: argparse.Namespace) -> int:
    from ..evaluate import elbo, in_sample_elbo

    if args.json:
        check_output(args.json, example="elbo.json")
    if args.in_sample and inputs.schedule_source(args) != "costs":
        raise UsageError(
            "--in-sample needs --costs FILE --steps K: it re-evaluates that matrix's schedule on the "
            "matrix's own images and noise"
        )
    model = inputs.load_model(args)
    data = inputs.load_data(args)
    if args.in_sample:
        costs = inputs.load_costs(args.costs, model, replay="--in-sample")
        if args.seed is not None and args.seed != costs.info.seed:
            raise UsageError(
                f"--in-sample replays the noise of {args.costs}, drawn with seed {costs.info.seed}: leave out "
                f"--seed {args.seed} (or drop --in-sample for a fresh ELBO with that seed)"
            )
        sched = inputs.best_schedule(costs, args.steps, args.start, args.costs)[0]
        data = inputs.check_data_fits(data, model, args)
        est = in_sample_elbo(model, data, costs, sched, batch_size=args.batch_size, progress=not args.quiet)
        what = f"in-sample ELBO (the cost matrix's own images and noise) of the {len(sched)}-step schedule"
    else:
        sched = inputs.load_schedule(args, model)
        data = inputs.check_data_fits(data, model, args)
        est = elbo(model, data, sched, batch_size=args.batch_size, seed=seed_of(args), progress=not args.quiet)
        what = f"ELBO of the {len(sched)}-step schedule"
    print(f"{what} on {len(data)} data points: {est.bpd:.6f} ± {est.stderr:.6f} bits/dim")
    if args.json:
        write_json(
            args.json,
            {
                "bpd": est.bpd,
                "stderr": est.stderr,
                "n": int(len(data)),
                "in_sample": bool(args.in_sample),
                "schedule": _times(sched),
                "terms": est.terms.tolist(),
                "dpddpm_version": __version__,
            },
        )
    return 0


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


#: the most samples a PNG grid takes (a 64 x 64 grid)
MAX_GRID = 4096


def _check_room(out: Path, nbytes: int) -> None:
    """Refuse before any work an output that cannot fit on its disk."""
    import shutil

    base = next(p for p in (out.absolute().parent, *out.absolute().parents) if p.exists())
    free = shutil.disk_usage(base).free
    if nbytes > free:
        raise UsageError(
            f"{out} would take {nbytes / 2**30:.1f} GiB but its disk has {free / 2**30:.1f} GiB free; lower -n "
            "or choose another path"
        )


def _write_npy(out: Path, shape: tuple[int, ...], batches) -> None:
    """Write float32 batches (B, *shape[1:]) one after the other as one ``.npy`` array of ``shape``, atomically."""

    def write(fh) -> None:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
        )
        for batch in batches:
            fh.write(np.ascontiguousarray(batch.numpy(), dtype="<f4").tobytes())

    atomic_write(out, write)


def cmd_export(args: argparse.Namespace) -> int:
    if args.out:
        check_output(args.out, example="timesteps.json")
    sched = inputs.load_schedule(args)
    if args.format == "diffusers":
        from ..external import to_diffusers_timesteps

        obj = to_diffusers_timesteps(sched)
    else:
        obj = _times(sched)
    if args.out:
        print(f"wrote {write_json(args.out, obj)}")
    else:
        print(json.dumps(obj))
    return 0


def cmd_fit_variances(args: argparse.Namespace) -> int:
    from ..analytic import fit_analytic_variances

    out = check_output(args.out, example="variances.json")
    if args.variances:
        raise UsageError("fit-variances fits on the model's own variances: leave out --variances")
    model = inputs.load_model(args)
    data = inputs.check_data_fits(inputs.load_data(args), model, args)
    costs = inputs.load_costs(args.costs, model, replay="fit-variances")
    inputs.require_mse(costs, args.costs, "fit-variances")
    with claim_output(out):
        variances = fit_analytic_variances(model, data, costs, batch_size=args.batch_size)
        path = variances.save(out)
    print(
        f"wrote {path}: analytic variances fitted on {variances.info['N']} images "
        f"(decoder log variance {variances.decoder_log_variance:.4f}; m_1 = {variances.mse[1]:.3e}, "
        f"m_T = {variances.mse[-1]:.3e})"
    )
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..reproduce import markdown_table, reproduce, selection_and_test

    if args.selection < 1 or args.test < 1:
        raise UsageError("--selection and --test must be >= 1")
    if args.data is None and not args.pretrained:
        raise UsageError(
            "--data PATH is needed (the bundled --pretrained digits models default to the "
            "digits selection and test splits)"
        )
    if args.variances:
        raise UsageError("reproduce fits its own analytic variances on the selection images: use --analytic")
    out = check_output(args.out, folder=True)
    args.rows_file = out / "costs.npz"
    if args.analytic and args.resume and args.rows_file.is_file():  # check before hours of work, not after
        from ..costmatrix import CostMatrix

        inputs.require_mse(CostMatrix.load(args.rows_file), args.rows_file, "reproduce --analytic", partial=True)
    model = inputs.load_model(args)
    selection, test = selection_and_test(
        args.data,
        selection_split=args.selection_split,
        test_split=args.test_split,
        n_selection=args.selection,
        n_test=args.test,
    )
    name = args.pretrained or args.preset or Path(args.checkpoint or args.diffusers).stem
    res = reproduce(
        model,
        selection,
        test,
        out,
        steps=args.steps,
        skip_full=args.skip_full,
        batch_size=args.batch_size,
        resume=args.resume,
        seed=seed_of(args),
        progress=not args.quiet,
        name=name,
        analytic=args.analytic,
    )
    print(markdown_table(res))
    print(f"wrote {out / 'results.json'}, results.md, results.png")
    return 0
