"""The ``dpddpm`` command line: cost matrices, optimal schedules, ELBOs, samples, exports, Table 1.

Every subcommand has ``--help``. Errors that are the user's (missing, unreadable or corrupt files, unwritable
outputs, bad arguments, mismatched checkpoints) print their whole message and exit with code 2, without a
traceback; anything else is a bug and keeps its traceback. Outputs are checked before any model or data is
loaded, so a typo in ``--out`` costs seconds, not the run.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .files import Terminated, atomic_write, npz_path

if TYPE_CHECKING:
    from .costmatrix import CostMatrix
    from .model import DDPM


class UsageError(ValueError):
    """A bad combination of command-line arguments."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it says something (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        quiet = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        if quiet or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


# --------------------------------------------------------------------------- shared argument groups


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (one of)")
    g.add_argument("--pretrained", metavar="NAME", help="a bundled model: digits-simple or digits-hybrid")
    g.add_argument("--checkpoint", metavar="FILE", help="an improved-diffusion .pt state dict (with --preset/--flag)")
    g.add_argument("--preset", metavar="NAME", help="improved-diffusion preset, e.g. cifar10_uncond_50M_500K")
    g.add_argument("--flag", metavar="K=V", action="append", default=[],
                   help="an improved-diffusion flag overriding the preset (repeatable), e.g. --flag num_channels=128")
    g.add_argument("--diffusers", metavar="DIR", help="a local diffusers UNet2DModel + DDPMScheduler folder")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=256, help="network inputs per call")
    p.add_argument("--seed", type=int, default=0, help="noise seed")


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data (one of)")
    g.add_argument("--data", metavar="PATH", help="CIFAR-10 python folder, .npz of uint8 images, or PNG folder")
    g.add_argument("--split", default=None, help="CIFAR-10 split (train/test) or .npz array key")
    g.add_argument("--digits-split", metavar="NAME", help="scikit-learn digits split: train, selection or test")
    g.add_argument("--limit", type=int, default=None, help="use only the first N images")


def _add_schedule_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("schedule (one of)")
    g.add_argument("--schedule-json", metavar="FILE", help="a JSON list of times, or a file written by `schedule --json`")
    g.add_argument("--even", type=int, metavar="K", help="the even stride with K steps")
    g.add_argument("--quadratic", type=int, metavar="K", help="the quadratic stride with K steps")
    g.add_argument("--ddim-quad", type=int, metavar="K",
                   help="DDIM's own quadratic stride with K network calls (stops near 0.8 T; repeats dropped)")
    g.add_argument("--costs", metavar="FILE", help="a cost-matrix .npz: use its optimal schedule for --steps K")
    g.add_argument("--steps", type=int, metavar="K", help="number of steps K for --costs")
    g.add_argument("--start", choices=("T", "free"), default="T", help="with --costs: start at T or let the DP choose")


# --------------------------------------------------------------------------- checks before any work


def _device(name: str | None) -> torch.device:
    """The torch device named by --device; a CUDA device that is not there is refused before any work."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"bad --device {name!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here (no GPU is visible, or this torch was "
                             "built without CUDA); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})")
    return device


def _parse_flags(items: Sequence[str]) -> dict[str, str]:
    flags = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--flag expects K=V, got {item!r}")
        k, v = item.split("=", 1)
        flags[k.strip()] = v.strip()
    return flags


def _require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, if it is an existing file (not a folder)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"{what} {p} is a folder; give the file itself")
    return p


def check_output(path: str | os.PathLike, *, folder: bool = False, example: str = "NAME") -> Path:
    """Refuse an output that cannot be written, before any model or data is loaded.

    A file output must not be an existing folder (a folder output: not an existing file), and the nearest
    existing folder on its way must be a folder we may write in, so that what is missing can be created there.
    ``example`` names a file to suggest inside a folder that was given where a file belongs.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise NotADirectoryError(f"the output folder {path} is a file; give a folder")
    if not folder and path.is_dir():
        raise IsADirectoryError(f"the output {path} is a folder; give a file name, e.g. {path / example}")
    start = (path if folder else path.parent).absolute()
    base = next(p for p in (start, *start.parents) if p.exists())
    if not base.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: no permission to create files in {base}; choose another path")
    return path


# --------------------------------------------------------------------------- models, data, schedules


def load_model(args: argparse.Namespace) -> DDPM:
    """The DDPM named by --pretrained, --checkpoint (+ --preset/--flag) or --diffusers, on args.device."""
    device = _device(args.device)
    chosen = [n for n in ("pretrained", "checkpoint", "diffusers") if getattr(args, n)]
    if len(chosen) != 1:
        raise UsageError("give exactly one model: --pretrained NAME, --checkpoint FILE --preset NAME, or --diffusers DIR")
    if args.pretrained:
        from .digits import load_pretrained

        return load_pretrained(args.pretrained).to(device)
    if args.checkpoint:
        from .external import load_improved_diffusion

        path = _require_file(args.checkpoint, "checkpoint")
        return load_improved_diffusion(path, args.preset, device=device, **_parse_flags(args.flag))
    from .external import load_diffusers

    return load_diffusers(args.diffusers, device=device)


def load_data(args: argparse.Namespace) -> torch.Tensor:
    """The data named by --data (+ --split) or --digits-split, truncated to --limit."""
    if bool(args.data) == bool(args.digits_split):
        raise UsageError("give exactly one data source: --data PATH or --digits-split NAME")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.data:
        from .external import load_images

        return load_images(args.data, split=args.split, limit=args.limit)
    from .digits import digits_split

    x = digits_split(args.digits_split)
    return x if args.limit is None else x[: args.limit]


def _schedule_source(args: argparse.Namespace) -> str:
    """Which schedule option was given: schedule_json, even, quadratic or costs (exactly one)."""
    chosen = [n for n in ("schedule_json", "even", "quadratic", "ddim_quad", "costs") if getattr(args, n) is not None]
    if len(chosen) != 1:
        raise UsageError("give exactly one schedule: --schedule-json FILE, --even K, --quadratic K, --ddim-quad K "
                         "or --costs FILE --steps K")
    if chosen[0] == "costs" and args.steps is None:
        raise UsageError("--costs needs --steps K")
    if chosen[0] != "costs" and args.steps is not None:
        raise UsageError("--steps goes with --costs FILE")
    return chosen[0]


def load_schedule(args: argparse.Namespace, model: DDPM | None = None) -> np.ndarray:
    """The schedule named by --schedule-json, --even K, --quadratic K or --costs FILE --steps K.

    With a model, a schedule file or cost matrix recorded for another model is refused.
    """
    source = _schedule_source(args)
    T = None if model is None else model.T
    if source == "schedule_json":
        return schedule_from_json(args.schedule_json, T)
    if source == "costs":
        return best_schedule(load_costs(args.costs, model), args.steps, args.start)[0]
    if T is None:
        raise UsageError("--even/--quadratic/--ddim-quad need the model's T, which export does not know; "
                         "use --costs FILE --steps K or --schedule-json FILE")
    from .strides import ddim_schedule, even_schedule, quadratic_schedule

    if source == "ddim_quad":
        return ddim_schedule(T, args.ddim_quad, "quad")
    return even_schedule(T, args.even) if source == "even" else quadratic_schedule(T, args.quadratic)


def schedule_from_json(path: str, T: int | None = None) -> np.ndarray:
    """The times in a schedule file: a JSON list, or the object `dpddpm schedule --json` writes.

    A file that records its T is refused for a model with another T.
    """
    from .files import read_json
    from .validation import check_schedule

    file = _require_file(path, "schedule file")
    obj = read_json(file, "schedule file")
    times = obj.get("schedule") if isinstance(obj, dict) else obj
    recorded = obj.get("T") if isinstance(obj, dict) else None
    numbers = isinstance(times, list) and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times)
    if not numbers or not (recorded is None or isinstance(recorded, int)):
        raise ValueError(f"schedule file {file} holds no schedule: expected a JSON list of times such as "
                         '[1000, 500, 1], or an object with a "schedule" list and an integer "T" (as '
                         "`dpddpm schedule --json` writes)")
    if recorded is not None and T is not None and recorded != T:
        raise UsageError(f"schedule file {file} was made for T = {recorded}, but the model has T = {T}; make one "
                         "for this model: dpddpm schedule COSTS --steps K --json FILE, with a cost matrix of it")
    try:
        return check_schedule(times, T or recorded or np.iinfo(np.int64).max)
    except ValueError as exc:
        raise ValueError(f"schedule file {file}: {exc}") from None


def load_costs(path: str, model: DDPM | None = None) -> CostMatrix:
    """A cost-matrix file; with ``model``, one recorded for another model or other settings is refused."""
    from .costmatrix import CostMatrix

    file = _require_file(path, "cost-matrix file")
    costs = CostMatrix.load(file)
    if model is not None:
        _check_costs_fit(costs, model, file)
    return costs


def _check_costs_fit(costs: CostMatrix, model: DDPM, file: Path) -> None:
    """Refuse a matrix whose metadata name another model: its schedules are optimal for that model only."""
    from .fingerprint import model_fingerprint

    if costs.T != model.T:
        raise UsageError(f"the cost matrix {file} has T = {costs.T} but the model has T = {model.T}")
    ours: dict[str, Any] = {"variance": model.variance, "num_bins": model.num_bins,
                            "clip_denoised": model.clip_denoised}
    if "weights_fingerprint" in costs.meta:  # hashing the weights costs a pass over them: only when comparable
        ours["weights_fingerprint"] = model_fingerprint(model)
    wrong = [k for k, v in ours.items() if k in costs.meta and costs.meta[k] != v]
    if wrong:
        detail = "; ".join(f"{k}: {costs.meta[k]!r} in the file, {ours[k]!r} for the model" for k in wrong)
        raise UsageError(f"the cost matrix {file} was computed for another model ({detail}). To use its schedule "
                         f"on this model anyway: dpddpm schedule {file} --steps K --json S.json, then pass "
                         "--schedule-json S.json")


def best_schedule(costs: CostMatrix, K: int, start: str = "T") -> tuple[np.ndarray, float]:
    """(schedule, in-sample bits/dim) of the optimal K-step schedule of a cost matrix."""
    from .dp import optimal_schedules

    best = optimal_schedules(costs, K, start=start)
    return best.schedule(K), best.bpd(K)


def _times(sched: np.ndarray) -> list[int]:
    return [int(t) for t in sched]


def _write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2).encode()
    return atomic_write(path, lambda fh: fh.write(text))


# --------------------------------------------------------------------------- subcommands


def shard_spec(args: argparse.Namespace) -> tuple[int, int, bool]:
    """(index, count, from_torchrun): explicit --shard-index/--num-shards, else RANK/WORLD_SIZE, else (0, 1)."""
    if args.shard_index is not None or args.num_shards is not None:
        if args.shard_index is None or args.num_shards is None:
            raise UsageError("--shard-index and --num-shards go together")
        i, n, env = args.shard_index, args.num_shards, False
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        i, n, env = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), True
    else:
        return 0, 1, False
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"need 0 <= shard index < number of shards, got {i} of {n}")
    return i, n, env


def shard_rows(T: int, index: int, count: int) -> list[int]:
    """The rows t in 1..T with t % count == index (interleaved, so shards get similar work)."""
    return [t for t in range(1, T + 1) if t % count == index]


def rank_path(out: str | Path, rank: int) -> Path:
    """``costs.npz`` -> ``costs.rank<k>.npz``: the partial file of one torchrun rank."""
    out = Path(out)
    stem = out.name[:-4] if out.name.endswith(".npz") else out.name
    return out.with_name(f"{stem}.rank{rank}.npz")


def cmd_costs(args: argparse.Namespace) -> int:
    from .costs import cost_matrix

    index, count, env = shard_spec(args)
    device = _device(args.device)
    if env and device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    check_output(args.out, example="costs.npz")  # a folder given as --out, then the file written (.npz added)
    out = check_output(npz_path(rank_path(args.out, index) if env and count > 1 else args.out), example="costs.npz")
    args.device = str(device)
    args.rows_file = out  # where an interruption leaves the finished rows (see _stopped)
    model = load_model(args)
    data = load_data(args)
    rows = None if count == 1 else shard_rows(model.T, index, count)
    costs = cost_matrix(model, data, batch_size=args.batch_size, device=device, progress=not args.quiet,
                        seed=args.seed, rows=rows, checkpoint=out, resume=args.resume,
                        save_every=args.save_every, autocast=args.autocast)
    print(f"wrote {out}: {costs!r}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .costmatrix import CostMatrix

    out = check_output(npz_path(args.out), example="costs.npz")
    forgot = "Did you forget the OUT argument? Usage: dpddpm merge OUT PART [PART ...]"
    for part in args.parts:  # e.g. OUT also matched by the parts' glob: the merge would replace an input
        if Path(part).resolve() == out.resolve():
            raise UsageError(f"the output {args.out} is also an input ({part}): merging would overwrite that "
                             f"shard. {forgot}")
    parts = [CostMatrix.load(_require_file(p, "partial cost matrix")) for p in args.parts]
    merged = CostMatrix.merge(parts, names=args.parts)  # refuses other models or data, and rows counted twice
    if not args.allow_partial:
        try:
            merged.require_complete()
        except ValueError as exc:  # `dpddpm merge c.rank*.npz` takes the first shard for OUT: say so
            raise ValueError(f"{exc}. {out} exists and is not one of the parts. {forgot}" if out.exists()
                             else str(exc)) from None
    path = merged.save(out)
    print(f"wrote {path}: {merged!r}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    if args.json:
        check_output(args.json, example="schedule.json")
    costs = load_costs(args.costs)
    sched, bpd = best_schedule(costs, args.steps, args.start)
    K = len(sched)
    print(f"optimal {K}-step schedule (T = {costs.T}, start = {args.start}): {bpd:.6f} bits/dim in-sample")
    print(" ".join(map(str, _times(sched))))
    print(f"(a per-image standard error needs the model and the matrix's data: dpddpm elbo MODEL DATA "
          f"--costs {args.costs} --steps {K} --in-sample)")
    if args.json:
        _write_json(args.json, {"T": costs.T, "K": K, "start": args.start, "bpd": bpd, "schedule": _times(sched)})
    return 0


def cmd_elbo(args: argparse.Namespace) -> int:
    from .evaluate import elbo

    if args.json:
        check_output(args.json, example="elbo.json")
    if args.in_sample and _schedule_source(args) != "costs":
        raise UsageError("--in-sample needs --costs FILE --steps K: it re-evaluates that matrix's schedule on the "
                         "matrix's own images and noise")
    model = load_model(args)
    data = load_data(args)
    if args.in_sample:
        from . import in_sample_elbo

        costs = load_costs(args.costs, model)
        sched = best_schedule(costs, args.steps, args.start)[0]
        est = in_sample_elbo(model, data, costs, sched, batch_size=args.batch_size, progress=not args.quiet)
        what = f"in-sample ELBO (the cost matrix's own images and noise) of the {len(sched)}-step schedule"
    else:
        sched = load_schedule(args, model)
        est = elbo(model, data, sched, batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
        what = f"ELBO of the {len(sched)}-step schedule"
    print(f"{what} on {len(data)} data points: {est.bpd:.6f} ± {est.stderr:.6f} bits/dim")
    if args.json:
        _write_json(args.json, {"bpd": est.bpd, "stderr": est.stderr, "n": int(len(data)),
                                "in_sample": bool(args.in_sample), "schedule": _times(sched),
                                "terms": est.terms.tolist()})
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .sampling import ddim_sample, sample

    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise UsageError(f"--out must end in .png or .npy, got {out.name}")
    if args.n < 1:
        raise UsageError(f"-n must be >= 1, got {args.n}")
    check_output(out, example=f"samples{out.suffix}")
    model = load_model(args)
    sched = load_schedule(args, model)
    gen = torch.Generator().manual_seed(args.seed)
    x = (ddim_sample if args.ddim else sample)(model, sched, args.n, gen)
    if out.suffix == ".npy":
        array = x.cpu().numpy()
        atomic_write(out, lambda fh: np.save(fh, array))
    else:
        save_grid(x, out, model.num_bins)
    print(f"wrote {args.n} samples ({len(sched)} steps{', DDIM' if args.ddim else ''}) to {out}")
    return 0


def save_grid(x: torch.Tensor, path: str | os.PathLike, num_bins: int = 256) -> None:
    """Save (n, C, H, W) images in [-1, 1] as one PNG grid (about square, 1-pixel gaps), atomically."""
    from PIL import Image

    x = x.detach().cpu().double().clamp(-1, 1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UsageError(f"PNG output needs (n, 1 or 3, H, W) images, got {tuple(x.shape)}; use .npy")
    levels = torch.round((x + 1) * (num_bins - 1) / 2) * (255.0 / (num_bins - 1))
    img = levels.round().to(torch.uint8).numpy()
    n, c, h, w = img.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = img[k].transpose(1, 2, 0)
    image = Image.fromarray(grid[..., 0] if c == 1 else grid)
    atomic_write(path, lambda fh: image.save(fh, format="PNG"))


def cmd_export(args: argparse.Namespace) -> int:
    if args.out:
        check_output(args.out, example="timesteps.json")
    sched = load_schedule(args)
    if args.format == "diffusers":
        from .external import to_diffusers_timesteps

        obj = to_diffusers_timesteps(sched)
    else:
        obj = _times(sched)
    if args.out:
        print(f"wrote {_write_json(args.out, obj)}")
    else:
        print(json.dumps(obj))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import markdown_table, reproduce

    if args.selection < 1 or args.test < 1:
        raise UsageError("--selection and --test must be >= 1")
    if args.data is None and not args.pretrained:
        raise UsageError("--data PATH is needed (the bundled --pretrained digits models default to the "
                         "digits selection and test splits)")
    out = check_output(args.out, folder=True)
    args.rows_file = out / "costs.npz"  # where an interruption leaves the finished rows (see _stopped)
    model = load_model(args)
    selection, test = _reproduce_data(args)
    if len(test) == 0:
        raise UsageError("no test images are left after the selection images")
    name = args.pretrained or args.preset or Path(args.checkpoint or args.diffusers).stem
    res = reproduce(model, selection, test, out, steps=args.steps, skip_full=args.skip_full,
                    batch_size=args.batch_size, resume=args.resume, seed=args.seed, progress=not args.quiet,
                    name=name)
    print(markdown_table(res))
    print(f"wrote {out / 'results.json'}, results.md, results.png")
    return 0


def _reproduce_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(selection, test) images: the digits splits, or --data split as --selection-split/--test-split say."""
    if args.data is None:
        from .digits import digits_split

        selection, test = digits_split("selection"), digits_split("test")
    else:
        from .external.images import is_cifar10_folder, load_images

        sel_split, test_split = args.selection_split, args.test_split
        if sel_split is None and test_split is None and is_cifar10_folder(args.data):
            sel_split, test_split = "train", "test"
        if sel_split == test_split:  # one pool: the first images select, the next ones test; never overlapping
            pool = load_images(args.data, split=sel_split, limit=args.selection + args.test)
            selection, test = pool[: args.selection], pool[args.selection:]
        else:
            selection = load_images(args.data, split=sel_split, limit=args.selection)
            test = load_images(args.data, split=test_split, limit=args.test)
    return selection[: args.selection], test[: args.test]


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpddpm", epilog="Run `dpddpm COMMAND --help` for the options of each command.", description="ELBO-optimal step schedules for pretrained DDPMs (Watson et al., 2021).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = _HelpFormatter

    p = sub.add_parser("costs", help="estimate the KL cost matrix (T network calls per image)", formatter_class=fmt,
                       description="Estimate every ELBO edge cost of a model on data; resumable and shardable. "
                       "Under torchrun each rank writes <out>.rank<k>.npz; combine them with `dpddpm merge`.")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--out", required=True,
                   help="output .npz (also the checkpoint while running; .npz is appended when missing)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from --out")
    p.add_argument("--save-every", type=float, default=60.0, help="seconds between checkpoint writes")
    p.add_argument("--shard-index", type=int, default=None, help="compute only rows t with t %% num_shards == index")
    p.add_argument("--num-shards", type=int, default=None, help="number of shards (default: WORLD_SIZE or 1)")
    p.add_argument("--autocast", choices=("bf16", "fp16"), default=None, help="CUDA autocast for the network")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_costs)

    p = sub.add_parser("merge", help="merge partial cost matrices (shards) into one file", formatter_class=fmt,
                       description="Merge partial cost-matrix files (e.g. torchrun ranks) and check completeness.")
    p.add_argument("out", help="output .npz (not one of the parts)")
    p.add_argument("parts", nargs="+", help="partial .npz files")
    p.add_argument("--allow-partial", action="store_true", help="write the result even if rows are missing")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("schedule", help="optimal K-step schedule from a cost matrix", formatter_class=fmt,
                       description="Run the DP on a cost-matrix file and print the optimal schedule.")
    p.add_argument("costs", help="cost-matrix .npz")
    p.add_argument("--steps", "-K", type=int, required=True, help="number of steps K (network calls)")
    p.add_argument("--start", choices=("T", "free"), default="T", help="start at T, or let the DP choose t_K")
    p.add_argument("--json", metavar="OUT", help="also write the schedule as JSON")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("elbo", help="fresh Monte-Carlo ELBO of a schedule", formatter_class=fmt,
                       description="Estimate a schedule's ELBO (bits/dim) on data with fresh noise.")
    _add_model_args(p)
    _add_data_args(p)
    _add_schedule_args(p)
    p.add_argument("--in-sample", action="store_true",
                   help="with --costs FILE --steps K and the matrix's own data: the matrix's value of its schedule "
                   "(its images and noise), with a per-image standard error")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_elbo)

    p = sub.add_parser("sample", help="draw samples on a schedule", formatter_class=fmt,
                       description="Sample with a model on a schedule; writes a PNG grid or an .npy array.")
    _add_model_args(p)
    _add_schedule_args(p)
    p.add_argument("-n", type=int, default=64, help="number of samples")
    p.add_argument("--ddim", action="store_true", help="deterministic DDIM (eta = 0) instead of ancestral")
    p.add_argument("--out", required=True, help="output .png (grid) or .npy (float32 array in [-1, 1])")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="write a schedule as JSON (diffusers timesteps or plain times)",
                       formatter_class=fmt, description="Export a schedule: 0-based descending indices for "
                       "diffusers' DDPMScheduler.set_timesteps(timesteps=...), or the 1-based times.")
    _add_schedule_args(p)
    p.add_argument("--format", choices=("diffusers", "plain"), default="diffusers", help="output format")
    p.add_argument("--out", default=None, help="output .json (default: print)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("reproduce", help="the paper's Table 1 pipeline on one model", formatter_class=fmt,
                       description="Cost matrix on selection data, even/quadratic/DP schedules for each K, fresh "
                       "test ELBOs; writes results.json, results.md and results.png into --out.")
    _add_model_args(p)
    p.add_argument("--data", default=None, help="image data (default for --pretrained: the digits splits)")
    p.add_argument("--selection-split", default=None,
                   help="split (or .npz key) for the cost matrix (CIFAR-10 default: train; otherwise one pool "
                   "of images is used: the first --selection select, the next --test test)")
    p.add_argument("--test-split", default=None, help="split (or .npz key) for the test ELBOs (CIFAR-10: test)")
    p.add_argument("--selection", type=int, default=256, help="number of selection images")
    p.add_argument("--test", type=int, default=256, help="number of test images")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="budgets K (default: 8 16 32 64 128 256, those <= T)")
    p.add_argument("--skip-full", action="store_true", help="skip the ELBO of all T steps")
    p.add_argument("--resume", action="store_true", help="resume the cost matrix from OUT/costs.npz")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)
    return parser


#: exceptions that report what the user gave (a path, an option, a file's contents, a model); anything else is
#: a bug in dpddpm and keeps its traceback. NotImplementedError: a model feature dpddpm does not support;
#: FloatingPointError: NaN/Inf in the model's output (raised by validation.check_finite).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError, NotImplementedError, FloatingPointError)

#: what to do about an error the operating system reported on a path
_OS_HINTS = {
    errno.EACCES: "check its permissions, or choose another path",
    errno.EPERM: "check its permissions, or choose another path",
    errno.EISDIR: "it is a folder; give a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOSPC: "the disk is full; free some space or choose another path",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another path",
}


def user_error_message(exc: BaseException) -> str | None:
    """The whole message to show for a user error, or None for an internal error (which keeps its traceback)."""
    if isinstance(exc, OSError) and exc.strerror and (exc.errno in _OS_HINTS or isinstance(exc, USER_ERRORS)):
        # raised by the operating system: "[Errno 13] Permission denied: 'x'" reads better as a sentence
        what = exc.strerror if exc.filename is None else f"cannot access {exc.filename}: {exc.strerror}"
        hint = _OS_HINTS.get(exc.errno)
        return what + (f" ({hint})" if hint else "")
    if isinstance(exc, ImportError):  # a missing optional extra, named with its install line by dpddpm
        return str(exc) if "pip install" in str(exc) else None
    if isinstance(exc, torch.cuda.OutOfMemoryError):  # a resource limit the user can act on
        return ("out of GPU memory: lower --batch-size (a cost-matrix run keeps its finished rows; continue it "
                "with --resume)")
    if isinstance(exc, USER_ERRORS):
        return str(exc).strip() or type(exc).__name__
    return None


def _stopped(args: argparse.Namespace, exc: KeyboardInterrupt) -> int:
    """Report Ctrl-C (exit 130) or SIGTERM (143), and where finished cost-matrix rows wait for --resume."""
    terminated = isinstance(exc, Terminated)
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    rows = getattr(args, "rows_file", None)
    if rows is not None and rows.exists():
        what += f"; finished rows are saved in {rows}; continue with --resume"
    print(f"dpddpm {args.command}: {what}", file=sys.stderr)
    return 143 if terminated else 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dpddpm`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a cost-matrix run (files.Terminated)
        return _stopped(args, exc)
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            raise
        print(f"dpddpm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
