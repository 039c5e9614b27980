"""Train a bundled digits model: ``python -m dpddpm.digits.train NAME [--steps N] [--out DIR]``.

* ``digits-simple``: L_simple (MSE of epsilon), fixed variance. fixed_small vs fixed_large is chosen at the end
  by a quick ELBO on the selection split; both full-chain test ELBOs go into the model card.
* ``digits-hybrid``: learned_range variance, L_hybrid = L_simple + 0.001 L_vlb with the mean detached in the
  L_vlb term (Nichol & Dhariwal). As in improved-diffusion, L_vlb for one uniformly drawn t is T times that
  term, so the added loss is (T / 1000) * term_t in bits/dim.
Both: t uniform on 1..T, Adam with warm-up and cosine decay, an EMA of the weights, and the EMA checkpoint
with the best quick ELBO on the selection split is kept (1197 training images overfit within minutes).
The run writes ``<out>/<name>.pt`` (float32 state_dict) and ``<out>/<name>.json`` (the model card).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..evaluate import elbo
from ..files import atomic_write
from ..gaussian import predict_x0, q_sample
from ..model import DDPM
from ..schedule import NoiseSchedule
from ..types import VarianceKind
from .data import DATA_SHAPE, NUM_BINS, SPLIT_SEED, SPLIT_SIZES, categorical_baseline_bpd, digits_split
from .net import DigitsNet, count_parameters
from .objective import QuickELBO, ScheduleTable, vlb_terms

T_DEFAULT = 4000


@dataclass
class Recipe:
    """Everything that defines one bundled model's training run."""

    name: str
    learn_sigma: bool
    steps: int
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    eval_every: int = 250
    vlb_weight: float = 0.001
    hidden: int = 192
    blocks: int = 2
    rank: int = 8
    dropout: float = 0.0
    T: int = T_DEFAULT


# The defaults reproduce the shipped weights (seed 0, one CPU thread per run). Without dropout the selection
# ELBO was best near step 1000 and then rose steadily (1.94 -> 2.6 bits/dim by step 10000); dropout 0.1 and a
# shorter run gave 0.01-0.02 bits/dim better checkpoints.
RECIPES = {
    "digits-simple": Recipe("digits-simple", learn_sigma=False, steps=4000, warmup=200, eval_every=250, dropout=0.1),
    "digits-hybrid": Recipe("digits-hybrid", learn_sigma=True, steps=4000, warmup=200, eval_every=250, dropout=0.1),
}


def make_model(recipe: Recipe, variance: VarianceKind | None = None) -> DDPM:
    """A fresh DDPM wrapper around a new DigitsNet for this recipe."""
    sched = NoiseSchedule.cosine(recipe.T)
    net = DigitsNet(
        sched.alpha_bar,
        num_bins=NUM_BINS,
        hidden=recipe.hidden,
        blocks=recipe.blocks,
        rank=recipe.rank,
        learn_sigma=recipe.learn_sigma,
        dropout=recipe.dropout,
    )
    variance = variance or ("learned_range" if recipe.learn_sigma else "fixed_small")
    return DDPM(net, sched, variance, time_input="index", data_shape=DATA_SHAPE, num_bins=NUM_BINS, clip_denoised=True)


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

    Returns the model card (a dict, also written as JSON).
    """
    start = time.time()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    model = make_model(recipe).to(dev)
    net = model.net
    ema = copy.deepcopy(net).requires_grad_(False)
    ema_model = DDPM(ema, model.schedule, model.variance, time_input="index", data_shape=DATA_SHAPE, num_bins=NUM_BINS)
    sched = model.schedule
    tab = ScheduleTable(sched, dev)
    train_x = digits_split("train").to(dev).reshape(-1, 64)
    quick = QuickELBO(sched, digits_split("selection"), device=dev)
    variances: tuple[VarianceKind, ...] = ("learned_range",) if recipe.learn_sigma else ("fixed_small", "fixed_large")
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        frac = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * frac))

    history, best = [], (math.inf, None, -1)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.steps, desc=recipe.name, unit="step")
    for step in range(recipe.steps):
        idx = torch.randint(0, train_x.shape[0], (recipe.batch_size,), generator=gen, device=dev)
        x0 = train_x[idx]
        t = torch.randint(1, recipe.T + 1, (recipe.batch_size,), generator=gen, device=dev)
        noise = torch.randn(x0.shape, generator=gen, device=dev)
        x_t = q_sample(sched, t, x0, noise).float()
        pred = net(x_t.reshape(-1, *DATA_SHAPE), t - 1).reshape(recipe.batch_size, -1, 64)
        eps = pred[:, 0]
        loss = (eps - noise).pow(2).mean()
        if recipe.learn_sigma:  # L_vlb trains only the variance: the mean is detached
            x0_hat = predict_x0(sched, t, x_t, eps.detach(), clip=True)
            vb = vlb_terms(tab, t, x0.double(), x0_hat, pred[:, 1], "learned_range")
            loss = loss + (recipe.vlb_weight * recipe.T) * vb.mean().float()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(recipe.ema_decay, (1.0 + step) / (10.0 + step))  # short warm-up of the average
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - d)
        if (step + 1) % recipe.eval_every == 0 or step + 1 == recipe.steps:
            ema.eval()
            q = quick(ema_model, variances)
            score = min(q.values())
            history.append({"step": step + 1, "loss": loss.item(), **{f"quick_{k}": v for k, v in q.items()}})
            if score < best[0]:
                best = (score, copy.deepcopy(ema.state_dict()), step + 1)
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.4f}", sel=f"{score:.3f}", best=f"{best[0]:.3f}@{best[2]}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    train_time = time.time() - start

    ema.load_state_dict(best[1])
    ema.eval()
    quick_best = quick(ema_model, variances)
    variance = min(quick_best, key=quick_best.get)
    card = {
        "name": recipe.name,
        "dpddpm_version": __version__,
        "paper": "Watson et al. 2021 (arXiv 2106.03802), models as Nichol & Dhariwal 2021",
        "data": {
            "source": "sklearn.datasets.load_digits",
            "scaling": "x / 8 - 1",
            "num_bins": NUM_BINS,
            "shape": list(DATA_SHAPE),
            "split_seed": SPLIT_SEED,
            "split_sizes": SPLIT_SIZES,
            "split": "numpy.random.default_rng(0).permutation(1797): train, selection, test in order",
        },
        "schedule": "cosine",
        "T": recipe.T,
        "variance": variance,
        "time_input": "index",
        "clip_denoised": True,
        "net": {"class": "dpddpm.digits.net.DigitsNet", **ema.config(), "parameters": count_parameters(ema)},
        "training": {
            "loss": "L_hybrid = L_simple + 0.001 L_vlb (mean detached in L_vlb)"
            if recipe.learn_sigma
            else "L_simple (MSE of epsilon)",
            "steps": recipe.steps,
            "batch_size": recipe.batch_size,
            "optimizer": "Adam",
            "lr": recipe.lr,
            "warmup": recipe.warmup,
            "lr_decay": "cosine to 0",
            "grad_clip": 1.0,
            "ema_decay": recipe.ema_decay,
            "t_sampling": "uniform on 1..T",
            "seed": seed,
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "train_time_s": round(train_time, 1),
            "selected_step": best[2],
            "selection": "EMA checkpoint with the lowest quick ELBO (stratified, fixed noise, 32 t's "
            "+ decoder per image) on the selection split, evaluated every "
            f"{recipe.eval_every} steps",
            "history": history,
        },
        "selection_quick_elbo_bpd": quick_best,
    }
    if final_eval:
        test = digits_split(eval_data)
        full = np.arange(recipe.T, 0, -1)
        results = {}
        for k in variances:
            m = DDPM(ema, sched, k, time_input="index", data_shape=DATA_SHAPE, num_bins=NUM_BINS)
            est = elbo(m, test, full, batch_size=512, seed=seed + 1)
            results[k] = {"bpd": est.bpd, "stderr": est.stderr}
        base, base_se = categorical_baseline_bpd(digits_split("train"), test)
        card["test_elbo"] = {
            "split": eval_data,
            "N": int(test.shape[0]),
            "K": recipe.T,
            "fresh_noise_seed": seed + 1,
            "bpd": results[variance]["bpd"],
            "stderr": results[variance]["stderr"],
            "by_variance": results,
        }
        card["baseline_categorical_bpd"] = {
            "bpd": base,
            "stderr": base_se,
            "model": "independent per-pixel categorical, add-one smoothing, fit on train",
        }
        if not recipe.learn_sigma:
            card["variance_choice"] = (
                f"{variance}: lower quick ELBO on the selection split "
                f"({', '.join(f'{k} {v:.4f}' for k, v in quick_best.items())}); full-chain test ELBOs of both "
                "are in test_elbo.by_variance"
            )
    card["total_time_s"] = round(time.time() - start, 1)
    out = Path(out)
    state = {k: v.detach().float().cpu().contiguous() for k, v in ema.state_dict().items()}
    atomic_write(out / f"{recipe.name}.pt", lambda fh: torch.save(state, fh))
    atomic_write(out / f"{recipe.name}.json", lambda fh: fh.write((json.dumps(card, indent=2) + "\n").encode()))
    return card


def main(argv: list[str] | None = None) -> None:
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = copy.replace(RECIPES[args.name]) if hasattr(copy, "replace") else copy.copy(RECIPES[args.name])
    for field, value in (
        ("steps", args.steps),
        ("batch_size", args.batch_size),
        ("eval_every", args.eval_every),
        ("dropout", args.dropout),
        ("warmup", args.warmup),
    ):
        if value is not None:
            setattr(recipe, field, value)
    card = train(recipe, args.out, seed=args.seed, device=args.device, final_eval=not args.no_final_eval)
    summary = card.get("test_elbo", card["selection_quick_elbo_bpd"])
    print(json.dumps({"name": card["name"], "variance": card["variance"], "result": summary}, indent=1))


if __name__ == "__main__":
    main()
