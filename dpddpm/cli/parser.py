"""The options of every subcommand of ``dpddpm`` (argparse), with the shared groups for a model, data and a
schedule. Each subcommand's ``func`` is its ``cmd_*`` function in :mod:`.commands`, :mod:`.merging` or
:mod:`.samples`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..validation import check_batch_size, check_int, check_seconds, check_seed
from . import commands, merging, samples


def _checked(check: Callable[[Any], Any], parse: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type``: parse the text, then run the library's own check on it (one rule for the command
    line and the API); a bad value exits 2 with argparse's usage message and the check's reason."""

    def convert(text: str) -> Any:
        try:
            return check(parse(text))
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    convert.__name__ = check.__name__.removeprefix("check_")  # what argparse names in "invalid ... value"
    return convert


_batch_size = _checked(check_batch_size)
_seed = _checked(check_seed)
_positive = _checked(lambda v: check_int(v, "the value", low=1))
_seconds = _checked(lambda v: check_seconds(v, "the interval"), float)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it says something (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        quiet = (
            action.default is None
            or action.default is False
            or action.default == []
            or action.default == argparse.SUPPRESS
        )
        if quiet or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (one of)")
    g.add_argument("--pretrained", metavar="NAME", help="a bundled model: digits-simple or digits-hybrid")
    g.add_argument("--checkpoint", metavar="FILE", help="an improved-diffusion .pt state dict (with --preset/--flag)")
    g.add_argument("--preset", metavar="NAME", help="improved-diffusion preset, e.g. cifar10_uncond_50M_500K")
    g.add_argument(
        "--flag",
        metavar="K=V",
        action="append",
        default=[],
        help="an improved-diffusion flag overriding the preset (repeatable), e.g. --flag num_channels=128",
    )
    g.add_argument("--diffusers", metavar="DIR", help="a local diffusers UNet2DModel + DDPMScheduler folder")
    p.add_argument(
        "--variances",
        metavar="FILE",
        help="use the frozen analytic variances of FILE (written by `dpddpm fit-variances`) for every jump",
    )
    p.add_argument(
        "--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)"
    )
    p.add_argument("--batch-size", type=_batch_size, default=256, help="network inputs per call")
    p.add_argument("--seed", type=_seed, default=None, help="noise seed, 0 .. 2**63 - 1 (default 0)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (one of)")
    g.add_argument("--data", metavar="PATH", help="CIFAR-10 python folder, .npz of uint8 images, or PNG folder")
    g.add_argument("--split", default=None, help="CIFAR-10 split (train/test) or .npz array key")
    g.add_argument("--digits-split", metavar="NAME", help="scikit-learn digits split: train, selection or test")
    g.add_argument("--limit", type=_positive, default=None, help="use only the first N images")


def _add_schedule_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("schedule (one of)")
    g.add_argument(
        "--schedule-json", metavar="FILE", help="a JSON list of times, or a file written by `schedule --json`"
    )
    g.add_argument("--even", type=_positive, metavar="K", help="the even stride with K steps")
    g.add_argument("--quadratic", type=_positive, metavar="K", help="the quadratic stride with K steps")
    g.add_argument(
        "--ddim-quad",
        type=_positive,
        metavar="K",
        help="DDIM's own quadratic stride with K network calls (stops near 0.8 T; repeats dropped)",
    )
    g.add_argument("--costs", metavar="FILE", help="a cost-matrix .npz: use its optimal schedule for --steps K")
    g.add_argument("--steps", type=_positive, metavar="K", help="number of steps K for --costs")
    g.add_argument("--start", choices=("T", "free"), default="T", help="with --costs: start at T or let the DP choose")


def _command(sub, name: str, func, help: str, description: str, *groups) -> argparse.ArgumentParser:
    """A subcommand running ``func``, with the shared option groups ``groups`` (e.g. :func:`_add_model_args`)."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=_HelpFormatter)
    for add in groups:
        add(p)
    p.set_defaults(func=func)
    return p


def _add_costs(sub) -> None:
    p = _command(
        sub,
        "costs",
        commands.cmd_costs,
        "estimate the KL cost matrix (T network calls per image)",
        "Estimate every ELBO edge cost of a model on data; resumable and shardable. Under torchrun each "
        "rank writes <out>.rank<k>.npz; combine them with `dpddpm merge`.",
        _add_model_args,
        _add_data_args,
    )
    p.add_argument(
        "--out", required=True, help="output .npz (also the checkpoint while running; .npz is appended when missing)"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from --out")
    p.add_argument("--save-every", type=_seconds, default=60.0, help="seconds between checkpoint writes (finite, >= 0)")
    p.add_argument("--shard-index", type=int, default=None, help="compute only rows t with t %% num_shards == index")
    p.add_argument("--num-shards", type=int, default=None, help="number of shards (default: WORLD_SIZE or 1)")
    p.add_argument("--autocast", choices=("bf16", "fp16"), default=None, help="CUDA autocast for the network")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_merge(sub) -> None:
    p = _command(
        sub,
        "merge",
        merging.cmd_merge,
        "merge partial cost matrices (shards) into one file",
        "Merge partial cost-matrix files (e.g. torchrun ranks) and check completeness.",
    )
    p.add_argument("out", help="output .npz (not one of the parts)")
    p.add_argument("parts", nargs="+", help="partial .npz files")
    p.add_argument("--allow-partial", action="store_true", help="write the result even if rows are missing")


def _add_schedule(sub) -> None:
    p = _command(
        sub,
        "schedule",
        commands.cmd_schedule,
        "optimal K-step schedule from a cost matrix",
        "Run the DP on a cost-matrix file and print the optimal schedule.",
    )
    p.add_argument("costs", help="cost-matrix .npz")
    p.add_argument("--steps", "-K", type=_positive, required=True, help="number of steps K (network calls)")
    p.add_argument("--start", choices=("T", "free"), default="T", help="start at T, or let the DP choose t_K")
    p.add_argument("--json", metavar="OUT", help="also write the schedule as JSON")


def _add_elbo(sub) -> None:
    p = _command(
        sub,
        "elbo",
        commands.cmd_elbo,
        "fresh Monte-Carlo ELBO of a schedule",
        "Estimate a schedule's ELBO (bits/dim) on data with fresh noise.",
        _add_model_args,
        _add_data_args,
        _add_schedule_args,
    )
    p.add_argument(
        "--in-sample",
        action="store_true",
        help="with --costs FILE --steps K and the matrix's own data: the matrix's value of its schedule "
        "(its images and noise), with a per-image standard error",
    )
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_sample(sub) -> None:
    p = _command(
        sub,
        "sample",
        samples.cmd_sample,
        "draw samples on a schedule",
        "Sample with a model on a schedule; writes a PNG grid or an .npy array.",
        _add_model_args,
        _add_schedule_args,
    )
    p.add_argument("-n", type=_positive, default=64, help="number of samples (drawn --batch-size at a time)")
    p.add_argument("--ddim", action="store_true", help="deterministic DDIM (eta = 0) instead of ancestral")
    p.add_argument("--out", required=True, help="output .png (grid) or .npy (float32 array in [-1, 1])")


def _add_export(sub) -> None:
    p = _command(
        sub,
        "export",
        commands.cmd_export,
        "write a schedule as JSON (diffusers timesteps or plain times)",
        "Export a schedule: 0-based descending indices for diffusers' "
        "DDPMScheduler.set_timesteps(timesteps=...), or the 1-based times.",
        _add_schedule_args,
    )
    p.add_argument("--format", choices=("diffusers", "plain"), default="diffusers", help="output format")
    p.add_argument("--out", default=None, help="output .json (default: print)")


def _add_fit_variances(sub) -> None:
    p = _command(
        sub,
        "fit-variances",
        commands.cmd_fit_variances,
        "fit analytic (KL-optimal) variances on selection data",
        "From a cost matrix of the model on selection data (its recorded errors of x^_0) and N more network "
        "calls for the decoder, write the frozen analytic variances sigma*^2 = beta~ + c1^2 m_t as JSON; use "
        "them with --variances FILE in costs, elbo, sample.",
        _add_model_args,
        _add_data_args,
    )
    p.add_argument("--costs", required=True, metavar="FILE", help="the model's cost matrix on the same data")
    p.add_argument("--out", required=True, help="output .json")


def _add_reproduce(sub) -> None:
    p = _command(
        sub,
        "reproduce",
        commands.cmd_reproduce,
        "the paper's Table 1 pipeline on one model",
        "Cost matrix on selection data, even/quadratic/DP schedules for each K, fresh test ELBOs; writes "
        "results.json, results.md and results.png into --out.",
        _add_model_args,
    )
    p.add_argument("--data", default=None, help="image data (default for --pretrained: the digits splits)")
    p.add_argument(
        "--selection-split",
        default=None,
        help="split (or .npz key) for the cost matrix (CIFAR-10 default: train; otherwise one pool "
        "of images is used: the first --selection select, the next --test test)",
    )
    p.add_argument("--test-split", default=None, help="split (or .npz key) for the test ELBOs (CIFAR-10: test)")
    p.add_argument("--selection", type=_positive, default=256, help="number of selection images")
    p.add_argument("--test", type=_positive, default=256, help="number of test images")
    p.add_argument(
        "--steps", type=_positive, nargs="+", default=None, help="budgets K (default: 8 16 32 64 128 256, those <= T)"
    )
    p.add_argument("--skip-full", action="store_true", help="skip the ELBO of all T steps")
    p.add_argument(
        "--analytic",
        action="store_true",
        help="also fit analytic variances on the selection images (frozen) and run the DP on their matrix",
    )
    p.add_argument("--resume", action="store_true", help="resume the cost matrix from OUT/costs.npz")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``dpddpm`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="dpddpm",
        epilog="Run `dpddpm COMMAND --help` for the options of each command.",
        description="ELBO-optimal step schedules for pretrained DDPMs (Watson et al., 2021).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_costs,
        _add_merge,
        _add_schedule,
        _add_elbo,
        _add_sample,
        _add_export,
        _add_fit_variances,
        _add_reproduce,
    ):
        add(sub)
    return parser
