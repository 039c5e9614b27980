"""The subcommands (``merge`` and ``sample`` are in :mod:`.merging` and :mod:`.samples`): each checks its
outputs, loads what its options name (:mod:`.inputs`), calls the library and prints what it did.
``args.rows_file`` tells the error report where a stopped cost-matrix run left its rows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .._version import __version__
from ..files import claim_output, npz_path, write_json
from ..sharding import Shard
from . import inputs
from .errors import UsageError
from .inputs import check_output


def _times(sched: np.ndarray) -> list[int]:
    """A schedule (K,) as plain ints, for JSON."""
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
    from ..checkpoint import cost_matrix

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
        f"wrote {path}: analytic variances fitted on {variances.info.N} images "
        f"(decoder log variance {variances.decoder_log_variance:.4f}; m_1 = {variances.mse[1]:.3e}, "
        f"m_T = {variances.mse[-1]:.3e})"
    )
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..reproduce import ReproduceOptions, markdown_table, reproduce, selection_and_test

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
    options = ReproduceOptions(
        steps=args.steps,
        skip_full=args.skip_full,
        batch_size=args.batch_size,
        resume=args.resume,
        seed=seed_of(args),
        progress=not args.quiet,
        name=name,
        analytic=args.analytic,
    )
    res = reproduce(model, selection, test, out, options=options)
    print(markdown_table(res.to_dict()))
    print(f"wrote {out / 'results.json'}, results.md, results.png")
    return 0
