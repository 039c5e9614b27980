"""What the command line reads: the device, model, data, schedule and cost matrix that its options name, and
the checks on paths and outputs that run before any of them is loaded (a typo in ``--out`` costs seconds, not
the run)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import UsageError

if TYPE_CHECKING:
    from ..costmatrix import CostMatrix
    from ..model import DDPM


def device(name: str | None) -> torch.device:
    """The torch device named by --device; a CUDA device that is not there is refused before any work."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"bad --device {name!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name}: CUDA is not available here (no GPU is visible, or this torch was "
                "built without CUDA); use --device cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"--device {name}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})")
    return dev


def parse_flags(items: Sequence[str]) -> dict[str, str]:
    """``--flag K=V`` options as a dict of improved-diffusion flags."""
    flags = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--flag expects K=V, got {item!r}")
        k, v = item.split("=", 1)
        flags[k.strip()] = v.strip()
    return flags


def require_file(path: str | os.PathLike, what: str) -> Path:
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


def load_model(args: argparse.Namespace) -> DDPM:
    """The DDPM named by --pretrained, --checkpoint (+ --preset/--flag) or --diffusers, on args.device, with
    the frozen analytic variances of --variances FILE when given."""
    model = _load_base_model(args)
    if not getattr(args, "variances", None):
        return model
    from ..analytic import AnalyticVariances, with_analytic_variances

    file = require_file(args.variances, "analytic-variances file")
    variances = AnalyticVariances.load(file)  # refuses a file that records no weights fingerprint
    try:  # the library checks T and the weights fingerprint; here the message gains the file and the fix
        return with_analytic_variances(model, variances)
    except ValueError as exc:
        raise UsageError(
            f"{file} does not fit this model: {exc}; fit them for this model with dpddpm fit-variances"
        ) from None


def _load_base_model(args: argparse.Namespace) -> DDPM:
    dev = device(args.device)
    chosen = [n for n in ("pretrained", "checkpoint", "diffusers") if getattr(args, n)]
    if len(chosen) != 1:
        raise UsageError(
            "give exactly one model: --pretrained NAME, --checkpoint FILE --preset NAME, or --diffusers DIR"
        )
    if args.pretrained:
        from ..digits import load_pretrained

        return load_pretrained(args.pretrained).to(dev)
    if args.checkpoint:
        from ..external import load_improved_diffusion

        path = require_file(args.checkpoint, "checkpoint")
        return load_improved_diffusion(path, args.preset, device=dev, **parse_flags(args.flag))
    from ..external import load_diffusers

    return load_diffusers(args.diffusers, device=dev)


def load_data(args: argparse.Namespace) -> torch.Tensor:
    """The data named by --data (+ --split) or --digits-split, truncated to --limit."""
    if bool(args.data) == bool(args.digits_split):
        raise UsageError("give exactly one data source: --data PATH or --digits-split NAME")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.data:
        from ..external import load_images

        return load_images(args.data, split=args.split, limit=args.limit)
    from ..digits import digits_split

    x = digits_split(args.digits_split)
    return x if args.limit is None else x[: args.limit]


def check_data_fits(data: torch.Tensor, model: DDPM, args: argparse.Namespace) -> torch.Tensor:
    """Refuse data that do not fit the model (shape, range, grid) or hold no image, naming where they came from."""
    from ..validation import check_data

    source = args.data or f"the digits split {args.digits_split}"
    try:
        return check_data(data, model.data_shape, model.num_bins)
    except ValueError as exc:
        raise ValueError(f"the data in {source} do not fit the model: {exc}") from None


def schedule_source(args: argparse.Namespace) -> str:
    """Which schedule option was given: schedule_json, even, quadratic, ddim_quad or costs (exactly one)."""
    chosen = [n for n in ("schedule_json", "even", "quadratic", "ddim_quad", "costs") if getattr(args, n) is not None]
    if len(chosen) != 1:
        raise UsageError(
            "give exactly one schedule: --schedule-json FILE, --even K, --quadratic K, --ddim-quad K "
            "or --costs FILE --steps K"
        )
    if chosen[0] == "costs" and args.steps is None:
        raise UsageError("--costs needs --steps K")
    if chosen[0] != "costs" and args.steps is not None:
        raise UsageError("--steps goes with --costs FILE")
    return chosen[0]


def load_schedule(args: argparse.Namespace, model: DDPM | None = None) -> np.ndarray:
    """The schedule named by --schedule-json, --even K, --quadratic K, --ddim-quad K or --costs FILE --steps K.

    With a model, a schedule file or cost matrix recorded for another model is refused.
    """
    source = schedule_source(args)
    T = None if model is None else model.T
    if source == "schedule_json":
        return schedule_from_json(args.schedule_json, T)
    if source == "costs":
        return best_schedule(load_costs(args.costs, model), args.steps, args.start, args.costs)[0]
    if T is None:
        raise UsageError(
            "--even/--quadratic/--ddim-quad need the model's T, which export does not know; "
            "use --costs FILE --steps K or --schedule-json FILE"
        )
    from ..strides import ddim_schedule, even_schedule, quadratic_schedule

    if source == "ddim_quad":
        return ddim_schedule(T, args.ddim_quad, "quad")
    return even_schedule(T, args.even) if source == "even" else quadratic_schedule(T, args.quadratic)


def schedule_from_json(path: str, T: int | None = None) -> np.ndarray:
    """The times in a schedule file: a JSON list, or the object `dpddpm schedule --json` writes.

    A file that records its T is refused for a model with another T.
    """
    from ..files import read_json
    from ..validation import check_schedule

    file = require_file(path, "schedule file")
    obj = read_json(file, "schedule file")
    times = obj.get("schedule") if isinstance(obj, dict) else obj
    recorded = obj.get("T") if isinstance(obj, dict) else None
    numbers = isinstance(times, list) and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times)
    if not numbers or not (recorded is None or (isinstance(recorded, int) and not isinstance(recorded, bool))):
        raise ValueError(
            f"schedule file {file} holds no schedule: expected a JSON list of times such as "
            '[1000, 500, 1], or an object with a "schedule" list and an integer "T" (as '
            "`dpddpm schedule --json` writes)"
        )
    if recorded is not None and T is not None and recorded != T:
        raise UsageError(
            f"schedule file {file} was made for T = {recorded}, but the model has T = {T}; make one "
            "for this model: dpddpm schedule COSTS --steps K --json FILE, with a cost matrix of it"
        )
    try:
        return check_schedule(times, T or recorded or np.iinfo(np.int64).max)
    except ValueError as exc:
        raise ValueError(f"schedule file {file}: {exc}") from None


def load_costs(path: str, model: DDPM | None = None, *, replay: str | None = None) -> CostMatrix:
    """A cost-matrix file; with ``model``, one recorded for another model or other settings is refused.

    ``replay``: the option or command that re-runs the model on the matrix's own noise (``"--in-sample"``,
    ``"fit-variances"``), so the advice for a mismatch is to give the matrix's own model, not to take its
    schedule over.
    """
    from ..costmatrix import CostMatrix

    file = require_file(path, "cost-matrix file")
    costs = CostMatrix.load(file)
    if model is not None:
        _check_costs_fit(costs, model, file, replay)
    return costs


def require_mse(costs: CostMatrix, file: str | os.PathLike, command: str, partial: bool = False) -> None:
    """Refuse a matrix whose computed rows do not all record m_t (a file from before dpddpm recorded it)."""
    from ..merge import rows_without_mse

    if not partial and not costs.is_complete:
        return  # the library names what is missing
    lacking = rows_without_mse(costs)
    if lacking:
        raise UsageError(
            f"{command} needs the errors of x^_0 (mse) that every cost-matrix row records, but {file} lacks them "
            f"in {len(lacking)} row(s) (first: t = {lacking[:5]}): it was written by an older dpddpm or merged "
            "with such a file; recompute it with `dpddpm costs` (or move it away to start afresh)"
        )


def _check_costs_fit(costs: CostMatrix, model: DDPM, file: Path, replay: str | None = None) -> None:
    """Refuse a matrix whose run info names another model: its schedules are optimal for that model only."""
    from ..fingerprint import mismatches

    if costs.T != model.T:
        raise UsageError(f"the cost matrix {file} has T = {costs.T} but the model has T = {model.T}")
    wrong, ours = mismatches(costs.info, model)  # hashes the weights only when the file records their hash
    if not wrong:
        return
    recorded = costs.info
    detail = "; ".join(f"{k}: {getattr(recorded, k)!r} in the file, {getattr(ours, k)!r} for the model" for k in wrong)
    if replay is None:
        raise UsageError(
            f"the cost matrix {file} was computed for another model ({detail}). To use its schedule "
            f"on this model anyway: dpddpm schedule {file} --steps K --json S.json, then pass "
            "--schedule-json S.json"
        )
    # a replay needs the matrix's own model: taking its schedule over cannot help
    analytic = recorded.variance == "analytic" and model.variance != "analytic"
    if replay == "fit-variances" and analytic:
        fix = "fit-variances needs a matrix of the model's own variances (`dpddpm costs` without --variances)"
    elif analytic:
        fix = "add --variances FILE, the analytic variances it was computed with"
    elif model.variance == "analytic":
        fix = "leave out --variances"
    else:
        fix = f"{replay} needs the model that computed it"
    raise UsageError(f"the cost matrix {file} was computed by another model ({detail}); {fix}")


def best_schedule(
    costs: CostMatrix, K: int, start: str = "T", file: str | os.PathLike | None = None
) -> tuple[np.ndarray, float]:
    """(schedule, in-sample bits/dim) of the optimal K-step schedule of a cost matrix (read from ``file``, which
    errors then name)."""
    from ..dp import optimal_schedules

    try:
        best = optimal_schedules(costs, K, start=start)
    except ValueError as exc:
        if file is None:
            raise
        raise ValueError(f"cost matrix {file}: {exc}") from None
    return best.schedule(K), best.bpd(K)
