"""The ``dpddpm`` command line: cost matrices, optimal schedules, ELBOs, samples, exports, Table 1.

Every subcommand has ``--help``. Errors that are the user's (missing files, bad arguments, mismatched
checkpoints) end with a one-line message and exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


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
    g.add_argument("--costs", metavar="FILE", help="a cost-matrix .npz: use its optimal schedule for --steps K")
    g.add_argument("--steps", type=int, metavar="K", help="number of steps K for --costs")
    g.add_argument("--start", choices=("T", "free"), default="T", help="with --costs: start at T or let the DP choose")


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"bad --device {name!r}: {exc}") from None


def _parse_flags(items: Sequence[str]) -> dict[str, str]:
    flags = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--flag expects K=V, got {item!r}")
        k, v = item.split("=", 1)
        flags[k.strip()] = v.strip()
    return flags


def _require_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def load_model(args: argparse.Namespace):
    """The DDPM named by --pretrained, --checkpoint (+ --preset/--flag) or --diffusers, on args.device."""
    device = _device(args.device)
    chosen = [n for n in ("pretrained", "checkpoint", "diffusers") if getattr(args, n)]
    if len(chosen) != 1:
        raise UsageError("give exactly one model: --pretrained NAME, --checkpoint FILE --preset NAME, or --diffusers DIR")
    if args.pretrained:
        from .pretrained import load_pretrained

        return load_pretrained(args.pretrained).to(device)
    if args.checkpoint:
        from .loaders import load_improved_diffusion

        path = _require_file(args.checkpoint, "checkpoint")
        return load_improved_diffusion(path, args.preset, device=device, **_parse_flags(args.flag))
    from .loaders import load_diffusers

    return load_diffusers(_require_file(args.diffusers, "diffusers folder"), device=device)


def load_data(args: argparse.Namespace) -> torch.Tensor:
    """The data named by --data (+ --split) or --digits-split, truncated to --limit."""
    if bool(args.data) == bool(args.digits_split):
        raise UsageError("give exactly one data source: --data PATH or --digits-split NAME")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.data:
        from .datasets import load_images

        return load_images(args.data, split=args.split, limit=args.limit)
    from .digits import digits_split

    x = digits_split(args.digits_split)
    return x if args.limit is None else x[: args.limit]


def load_schedule(args: argparse.Namespace, T: int | None) -> np.ndarray:
    """The schedule named by --schedule-json, --even K, --quadratic K or --costs FILE --steps K."""
    from .validation import check_schedule

    chosen = [n for n in ("schedule_json", "even", "quadratic", "costs") if getattr(args, n) is not None]
    if len(chosen) != 1:
        raise UsageError("give exactly one schedule: --schedule-json FILE, --even K, --quadratic K or --costs FILE --steps K")
    if args.schedule_json:
        obj = json.loads(_require_file(args.schedule_json, "schedule file").read_text())
        times = obj["schedule"] if isinstance(obj, dict) else obj
        return check_schedule(times, T if T is not None else np.iinfo(np.int64).max)
    if args.costs:
        return best_schedule(args.costs, args.steps, args.start, T)[0]
    if T is None:
        raise UsageError("--even/--quadratic need the model's T")
    from .strides import even_schedule, quadratic_schedule

    return even_schedule(T, args.even) if args.even is not None else quadratic_schedule(T, args.quadratic)


def best_schedule(costs_path: str, K: int | None, start: str = "T", T: int | None = None):
    """(schedule, in-sample bits/dim, stderr, T) of the optimal K-step schedule of a cost-matrix file."""
    from .costmatrix import CostMatrix
    from .dp import optimal_schedules, schedule_stderr

    if K is None:
        raise UsageError("--costs needs --steps K")
    costs = CostMatrix.load(_require_file(costs_path, "cost-matrix file"))
    if T is not None and costs.T != T:
        raise UsageError(f"the cost matrix has T = {costs.T} but the model has T = {T}")
    best = optimal_schedules(costs, K, start=start)
    sched = best.schedule(K)
    try:
        se = schedule_stderr(costs, sched)
    except ValueError:
        se = float("nan")
    return sched, best.bpd(K), se, costs.T


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
    out = Path(args.out)
    device = _device(args.device)
    if env and device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if env and count > 1:
        out = rank_path(out, index)
    args.device = str(device)
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

    parts = [CostMatrix.load(_require_file(p, "partial cost matrix")) for p in args.parts]
    keys = ("variance", "num_bins", "clip_denoised", "seed", "N")
    for p, path in zip(parts[1:], args.parts[1:]):
        p.check_meta({k: parts[0].meta[k] for k in keys if k in parts[0].meta}, source=path)
    overlap = np.sum([p.rows_done for p in parts], axis=0) > 1
    if overlap.any() and all(p.meta.get("N") == parts[0].meta.get("N") for p in parts):
        raise UsageError(f"the parts overlap in {int(overlap.sum())} row(s) (e.g. t = {int(np.flatnonzero(overlap)[0])}) "
                         "with the same data and seed; merging them would count samples twice")
    merged = CostMatrix.merge(parts)
    if not args.allow_partial:
        merged.require_complete()
    path = merged.save(args.out)
    print(f"wrote {path}: {merged!r}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    sched, bpd, se, T = best_schedule(args.costs, args.steps, args.start)
    print(f"optimal {len(sched)}-step schedule (T = {T}, start = {args.start}): {bpd:.6f} ± {se:.6f} bits/dim in-sample")
    print(" ".join(str(int(t)) for t in sched))
    if args.json:
        _write_json(args.json, {"T": T, "K": len(sched), "start": args.start, "bpd": bpd, "stderr": se,
                                "schedule": [int(t) for t in sched]})
    return 0


def cmd_elbo(args: argparse.Namespace) -> int:
    from .evaluate import elbo

    model = load_model(args)
    data = load_data(args)
    sched = load_schedule(args, model.T)
    est = elbo(model, data, sched, batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    print(f"ELBO of the {len(sched)}-step schedule on {len(data)} data points: {est.bpd:.6f} ± {est.stderr:.6f} bits/dim")
    if args.json:
        _write_json(args.json, {"bpd": est.bpd, "stderr": est.stderr, "n": int(len(data)),
                                "schedule": [int(t) for t in sched], "terms": est.terms.tolist()})
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .sampling import ddim_sample, sample

    model = load_model(args)
    sched = load_schedule(args, model.T)
    if args.n < 1:
        raise UsageError(f"-n must be >= 1, got {args.n}")
    gen = torch.Generator().manual_seed(args.seed)
    x = (ddim_sample if args.ddim else sample)(model, sched, args.n, gen)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.cpu().numpy())
    elif out.suffix == ".png":
        save_grid(x, out, model.num_bins)
    else:
        raise UsageError(f"--out must end in .png or .npy, got {out.name}")
    print(f"wrote {args.n} samples ({len(sched)} steps{', DDIM' if args.ddim else ''}) to {out}")
    return 0


def save_grid(x: torch.Tensor, path: Path, num_bins: int = 256) -> None:
    """Save (n, C, H, W) images in [-1, 1] as one PNG grid (about square, 1-pixel gaps)."""
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
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)


def cmd_export(args: argparse.Namespace) -> int:
    sched = load_schedule(args, None)
    if args.format == "diffusers":
        from .diffusers_export import to_diffusers_timesteps

        obj = to_diffusers_timesteps(sched)
    else:
        obj = [int(t) for t in sched]
    text = json.dumps(obj)
    if args.out:
        _write_json(args.out, obj)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    model = load_model(args)
    if args.selection < 1 or args.test < 1:
        raise UsageError("--selection and --test must be >= 1")
    if args.data is None:
        if not args.pretrained:
            raise UsageError("--data PATH is needed (the bundled --pretrained digits models default to the "
                             "digits selection and test splits)")
        from .digits import digits_split

        selection, test = digits_split("selection"), digits_split("test")
    else:
        from .datasets import is_cifar10_folder, load_images

        sel_split, test_split = args.selection_split, args.test_split
        if sel_split is None and test_split is None and is_cifar10_folder(args.data):
            sel_split, test_split = "train", "test"
        if sel_split == test_split:  # one pool: the first images select, the next ones test; never overlapping
            pool = load_images(args.data, split=sel_split, limit=args.selection + args.test)
            selection, test = pool[: args.selection], pool[args.selection:]
        else:
            selection = load_images(args.data, split=sel_split, limit=args.selection)
            test = load_images(args.data, split=test_split, limit=args.test)
    selection, test = selection[: args.selection], test[: args.test]
    if len(test) == 0:
        raise UsageError("no test images are left after the selection images")
    name = args.pretrained or args.preset or Path(args.checkpoint or args.diffusers).stem
    res = reproduce(model, selection, test, args.out, steps=args.steps, skip_full=args.skip_full,
                    batch_size=args.batch_size, resume=args.resume, seed=args.seed, progress=not args.quiet,
                    name=name)
    from .reproduce import markdown_table

    print(markdown_table(res))
    print(f"wrote {Path(args.out) / 'results.json'}, results.md, results.png")
    return 0


def _write_json(path: str, obj) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, p)


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
    p.add_argument("--out", required=True, help="output .npz (also the checkpoint while running)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from --out")
    p.add_argument("--save-every", type=float, default=60.0, help="seconds between checkpoint writes")
    p.add_argument("--shard-index", type=int, default=None, help="compute only rows t with t %% num_shards == index")
    p.add_argument("--num-shards", type=int, default=None, help="number of shards (default: WORLD_SIZE or 1)")
    p.add_argument("--autocast", choices=("bf16", "fp16"), default=None, help="CUDA autocast for the network")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_costs)

    p = sub.add_parser("merge", help="merge partial cost matrices (shards) into one file", formatter_class=fmt,
                       description="Merge partial cost-matrix files (e.g. torchrun ranks) and check completeness.")
    p.add_argument("out", help="output .npz")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dpddpm`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, NotImplementedError, ImportError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"dpddpm {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpddpm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
