"""The paper's Table 1 pipeline on one model: even vs quadratic vs DP-optimal schedules for several budgets.

1. the cost matrix on selection images (resumable: ``costs.npz`` in the output folder);
2. the DP over it, once, for every K up to the largest budget asked for;
3. for the even, quadratic and DP schedules of each K (and all T steps): fresh ELBOs on held-out test images, and
   the in-sample ELBO (the matrix's own value, replayed image by image for its standard error);
4. the smallest K whose DP schedule is within ``gap`` bits/dim of all T steps (the paper's headline criterion);
   optionally (``analytic=True``) the same with the KL-optimal variances of :mod:`dpddpm.analytic`, fitted on
   the selection images and frozen: the DP runs on the analytic matrix, and its test ELBOs use the frozen
   variances (``dp_analytic``);
   optionally (``sample_score``) sample quality: for each K up to ``sample_max_steps``, ancestral samples on
   every schedule and DDIM (eta = 0) samples on the even, quadratic and DP schedules, scored once per sample
   seed, with the mean and its standard error over seeds;
5. with an output folder: ``results.json``, ``results.md`` and ``results.png`` (see :mod:`dpddpm.report`).

Every standard error is over images, of each image's total. Every test ELBO (each schedule, each K, the full
chain) uses the same noise seed, ``seed + 1``, on the same images, so differences between schedules carry paired
standard errors (``*_minus_dp``). :func:`selection_and_test` picks the two sets of images.

Every phase is timed, and so are the network's forward calls alone ("network floor"), so the overhead of the
cost-matrix computation over its T * N network calls can be reported as a ratio.

The phases are in :mod:`dpddpm.pipeline.phases`; the options and results are typed
(:class:`~dpddpm.pipeline.options.ReproduceOptions`, :class:`~dpddpm.pipeline.results.ReproduceResults`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .model import DDPM, model_on, resolve_device
from .pipeline.options import DEFAULT_STEPS, GAP_BPD, SAMPLE_SEEDS, ReproduceOptions, SampleScore, budgets
from .pipeline.phases import run_pipeline, smallest_k_within
from .pipeline.results import ReproduceResults, Timing
from .pipeline.run import Run
from .report import markdown_table, plot, write_results

__all__ = [
    "DEFAULT_STEPS",
    "GAP_BPD",
    "SAMPLE_SEEDS",
    "ReproduceOptions",
    "ReproduceResults",
    "SampleScore",
    "budgets",
    "markdown_table",
    "plot",
    "reproduce",
    "selection_and_test",
    "smallest_k_within",
]


def selection_and_test(
    data: str | os.PathLike | None = None,
    *,
    selection_split: str | None = None,
    test_split: str | None = None,
    n_selection: int = 256,
    n_test: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection images (the cost matrix's) and the held-out test images of :func:`reproduce`.

    Args:
        data: an image file or folder (see :func:`dpddpm.load_images`); None: the bundled digits' selection and
            test splits.
        selection_split, test_split: the split (or ``.npz`` key) of each. A CIFAR-10 folder defaults to train
            and test; when both are the same (or unset) one pool is split: the first ``n_selection`` images
            select, the next ``n_test`` test, so the two never overlap.
        n_selection, n_test: how many images of each (at most).
    Returns:
        (selection, test): (n_selection, C, H, W) and (n_test, C, H, W) in [-1, 1].
    """
    if n_selection < 1 or n_test < 1:
        raise ValueError(f"need at least one selection and one test image, got {n_selection} and {n_test}")
    if data is None:
        from .digits import digits_split

        selection, test = digits_split("selection"), digits_split("test")
    else:
        from .external.images import is_cifar10_folder, load_images

        if selection_split is None and test_split is None and is_cifar10_folder(data):
            selection_split, test_split = "train", "test"
        if selection_split == test_split:
            pool = load_images(data, split=selection_split, limit=n_selection + n_test)
            selection, test = pool[:n_selection], pool[n_selection:]
        else:
            selection = load_images(data, split=selection_split, limit=n_selection)
            test = load_images(data, split=test_split, limit=n_test)
    if len(test) == 0:
        raise ValueError(f"no test images are left after the {len(selection)} selection images of {data}")
    return selection[:n_selection], test[:n_test]


def reproduce(
    model: DDPM,
    selection: torch.Tensor,
    test: torch.Tensor,
    out_dir: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    options: ReproduceOptions | None = None,
    **keywords: Any,
) -> ReproduceResults:
    """Run the pipeline; with ``out_dir``, write ``results.json``, ``results.md`` and ``results.png`` there.

    Args:
        model: the DDPM.
        selection: ``(N_sel, *data_shape)`` in [-1, 1]: the data the cost matrix (and so the DP) sees.
        test: ``(N_test, *data_shape)`` in [-1, 1]: held-out data for the fresh ELBOs.
        out_dir: the output folder, also holding the cost matrix as it is computed (``costs.npz``); None: keep
            the matrix in memory and write nothing.
        device: where to run (default: where the model is); the caller's model never moves.
        options: a :class:`~dpddpm.pipeline.options.ReproduceOptions`; or give its fields as keywords
            (``steps``, ``skip_full``, ``full_test``, ``batch_size``, ``test_batch_size``, ``resume``, ``seed``,
            ``gap``, ``progress``, ``name``, ``analytic``, ``sample_score``, ``sample_max_steps``, ``sample_n``,
            ``sample_seeds``), not both.
    Returns:
        the typed results (bits/dim, standard errors, schedules, timings in seconds, the fitted analytic
        variances); ``results.to_dict()`` is what ``results.json`` holds, and ``results["rows"]`` reads it.
    Raises:
        TypeError: both ``options`` and keywords, or a keyword that is not an option.
    """
    if options is None:
        options = ReproduceOptions(**keywords)
    elif keywords:
        raise TypeError(f"pass options= or keyword options, not both (got {sorted(keywords)})")
    device = resolve_device(model, device)
    model = model_on(model, device)  # a copy when it must move: the caller's model stays where it is
    out_dir = None if out_dir is None else Path(out_dir)
    run = Run(model, selection, test, device, options, Timing())
    results = run_pipeline(run, None if out_dir is None else out_dir / "costs.npz")
    if out_dir is not None:
        write_results(results.to_dict(), out_dir)
    return results
