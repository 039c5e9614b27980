"""Train a bundled digits model: ``python -m dpddpm.digits.train NAME [--steps N] [--out DIR]``.

* ``digits-simple``: L_simple (MSE of epsilon), fixed variance. fixed_small vs fixed_large is chosen at the end
  by a quick ELBO on the selection split; both full-chain test ELBOs go into the model card.
* ``digits-hybrid``: learned_range variance, L_hybrid = L_simple + 0.001 L_vlb with the mean detached in the
  L_vlb term (Nichol & Dhariwal). As in improved-diffusion, L_vlb for one uniformly drawn t is T times that
  term, so the added loss is (T / 1000) * term_t in bits/dim.
Both: t uniform on 1..T, Adam with warm-up and cosine decay, an EMA of the weights, and the EMA checkpoint
with the best quick ELBO on the selection split is kept (1197 training images overfit within minutes).
The run writes ``<out>/<name>.pt`` (float32 state_dict) and ``<out>/<name>.json`` (the model card,
:mod:`dpddpm.digits.card`). The recipes are :mod:`dpddpm.digits.recipe`; the steps every training run shares
are in :mod:`dpddpm.digits.training`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..evaluate import elbo
from ..gaussian import q_sample
from ..model import DDPM
from ..progress import progress_bar
from ..variances import VarianceKind
from .card import add_test_results, training_card
from .data import DATA_SHAPE, NUM_BINS, categorical_baseline_bpd, digits_split
from .net import DigitsNet
from .objective import QuickELBO, ScheduleTable
from .recipe import RECIPES, T_DEFAULT, Recipe, lr_at, make_model, wrap
from .training import Selection, ema_update, hybrid_loss, optimizer_step, select_best, weights_bytes, write_outputs

__all__ = ["RECIPES", "T_DEFAULT", "Recipe", "make_model", "train"]  # the recipe's names stay importable from here

QUICK_BATCH = 4096  # the selection split's quick ELBO in batches of this many (step, image) pairs


@dataclass
class _Run:
    """What one training run works with, on its device."""

    recipe: Recipe
    device: torch.device
    gen: torch.Generator  # draws the batches, t and the noise; dropout draws from torch's global generator
    net: DigitsNet
    ema: DigitsNet
    ema_model: DDPM  # the EMA weights with the recipe's first variance kind
    tab: ScheduleTable
    train_x: torch.Tensor  # (N, 64) in [-1, 1]
    quick: QuickELBO
    variances: tuple[VarianceKind, ...]  # the kinds the quick ELBO compares
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer


def _setup(recipe: Recipe, seed: int, device: str | None) -> _Run:
    """Seed, build the model, its EMA copy, the data and the optimiser."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)  # the weights' initialisation, then dropout
    gen = torch.Generator(device=dev).manual_seed(seed)
    model = make_model(recipe).to(dev)
    ema = copy.deepcopy(model.net).requires_grad_(False)
    params = list(model.net.parameters())
    return _Run(
        recipe=recipe,
        device=dev,
        gen=gen,
        net=model.net,
        ema=ema,
        ema_model=wrap(ema, model.schedule, model.variance),
        tab=ScheduleTable(model.schedule, dev),
        train_x=digits_split("train").to(dev).reshape(-1, 64),
        quick=QuickELBO(model.schedule, digits_split("selection"), device=dev),
        variances=("learned_range",) if recipe.learn_sigma else ("fixed_small", "fixed_large"),
        params=params,
        opt=torch.optim.Adam(params, lr=recipe.lr),
    )


def _step(run: _Run, step: int) -> float:
    """One optimisation step (0-based ``step``) on a fresh batch, then the EMA update; returns the loss."""
    r, dev, gen, sched = run.recipe, run.device, run.gen, run.ema_model.schedule
    idx = torch.randint(0, run.train_x.shape[0], (r.batch_size,), generator=gen, device=dev)
    x0 = run.train_x[idx]
    t = torch.randint(1, r.T + 1, (r.batch_size,), generator=gen, device=dev)
    noise = torch.randn(x0.shape, generator=gen, device=dev)
    x_t = q_sample(sched, t, x0, noise).float()
    pred = run.net(x_t.reshape(-1, *DATA_SHAPE), t - 1).reshape(r.batch_size, -1, 64)  # [epsilon, v] per pixel
    v = pred[:, 1] if r.learn_sigma else None
    loss = hybrid_loss(run.tab, sched, t, x0, x_t, noise, pred[:, 0], v, vlb_weight=r.vlb_weight, num_bins=NUM_BINS)
    optimizer_step(run.opt, run.params, loss, lr_at(r, step))
    ema_update(run.ema, run.net, r.ema_decay, step)
    return loss.item()


def _train_loop(run: _Run, progress: bool) -> Selection:
    """All of the recipe's steps, with the EMA's quick ELBO every ``eval_every`` steps and at the end."""
    r, sel = run.recipe, Selection()
    bar = progress_bar(progress, r.steps, r.name, unit="step")
    for step in range(r.steps):
        loss = _step(run, step)
        if (step + 1) % r.eval_every == 0 or step + 1 == r.steps:
            run.ema.eval()
            score = sel.record(step + 1, loss, run.quick(run.ema_model, run.variances, QUICK_BATCH), run.ema)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", sel=f"{score:.3f}", best=f"{sel.best_score:.3f}@{sel.best_step}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return sel


def _test_elbos(run: _Run, test: torch.Tensor, seed: int) -> dict[str, dict[str, float]]:
    """The full-chain ELBO (bits/dim and standard error) of the EMA net on ``test`` for each variance kind."""
    full = np.arange(run.recipe.T, 0, -1)
    results = {}
    for k in run.variances:
        est = elbo(wrap(run.ema, run.ema_model.schedule, k), test, full, batch_size=512, seed=seed)
        results[k] = {"bpd": est.bpd, "stderr": est.stderr}
    return results


def train(
    recipe: Recipe,
    out: Path,
    *,
    seed: int = 0,
    device: str | None = None,
    final_eval: bool = True,
    eval_data: str = "test",
    progress: bool = True,
) -> dict:
    """Train one model, keep the best EMA checkpoint on the selection split, write weights and card.

    With ``final_eval`` the card also gets the full-chain ELBOs on the ``eval_data`` split and the categorical
    baseline there. Returns the model card (a dict, also written as JSON).
    """
    start = time.time()
    run = _setup(recipe, seed, device)
    sel = _train_loop(run, progress)
    train_s = time.time() - start
    quick_best, variance = select_best(sel, run.ema, run.quick, run.ema_model, run.variances, QUICK_BATCH)
    card = training_card(
        recipe,
        run.ema,
        seed=seed,
        device=run.device,
        train_s=train_s,
        selection=sel,
        quick_best=quick_best,
        variance=variance,
    )
    if final_eval:
        test = digits_split(eval_data)
        add_test_results(
            card,
            eval_data=eval_data,
            n_images=int(test.shape[0]),
            seed=seed + 1,
            by_variance=_test_elbos(run, test, seed + 1),
            baseline=categorical_baseline_bpd(digits_split("train"), test),
        )
    card["total_time_s"] = round(time.time() - start, 1)
    write_outputs(Path(out), recipe.name, weights_bytes(run.ema.state_dict()), card)
    return card


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dpddpm.digits.train", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped run's)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="output folder (default ./runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the shipped runs used 1)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--no-final-eval", action="store_true", help="skip the full-chain test ELBO")
    return parser


def main(argv: list[str] | None = None) -> None:
    """The command line: train one recipe, print its test ELBO (or selection quick ELBOs) as JSON."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    fields = ("steps", "batch_size", "eval_every", "dropout", "warmup")  # the recipe fields the options change
    recipe = dataclasses.replace(
        RECIPES[args.name], **{f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    )
    card = train(recipe, args.out, seed=args.seed, device=args.device, final_eval=not args.no_final_eval)
    summary = card.get("test_elbo", card["selection_quick_elbo_bpd"])
    print(json.dumps({"name": card["name"], "variance": card["variance"], "result": summary}, indent=1))


if __name__ == "__main__":
    main()
