"""Train a photos model: ``python -m dpddpm.photos.train photos-simple|photos-hybrid --out DIR [--steps N] [--resume]``.

The paper's regime in everything but size: improved-diffusion's UNet (:mod:`dpddpm.external.unet`, scaled down),
the cosine schedule with T = 4000, 8-bit RGB data (``num_bins = 256``, :mod:`dpddpm.photos.data`), time input
``(t - 1) * 1000 / T`` as improved-diffusion's ``rescale_timesteps``.

* ``photos-simple``: L_simple (MSE of epsilon), fixed variance; fixed_small or fixed_large is chosen at the end by
  the quick ELBO on the selection split (both values go into the card).
* ``photos-hybrid``: learned_range variance (6 output channels), L_hybrid = L_simple + 0.001 L_vlb with the mean
  detached in L_vlb (Nichol & Dhariwal); L_vlb of one uniformly drawn t is T times its term, so the added loss is
  (T / 1000) term_t in bits/dim (the same objective as the digits models: :mod:`dpddpm.digits.objective`).

Both: t uniform on 1..T, random horizontal flips (the only augmentation), Adam with a linear warm-up then a
constant rate (as improved-diffusion, so a run can be extended by ``--resume --steps`` more), gradient clipping,
an EMA of the weights; every ``eval_every`` steps the EMA's quick ELBO on the selection split (fixed noise,
stratified t) is measured and the best EMA weights are kept.

**Deterministic and resumable.** One seeded generator draws the batches, t, noise and flips; dropout draws from
torch's global generator, seeded too. The whole state (weights, EMA, optimizer, both generators, the best
checkpoint, history, time spent) is saved atomically to ``DIR/<name>.ckpt.pt`` every ``--save-every`` seconds, at
each evaluation, at the end, and on Ctrl-C or SIGTERM; ``--resume`` continues from it and refuses a checkpoint of
another recipe or other data. On one CPU thread, N steps give the same weights as k steps and a resume to N.
``--steps`` is the total length: reaching it writes ``DIR/<name>.pt`` (the best EMA weights, float32) and
``DIR/<name>.json`` (the model card: data and licences, architecture, recipe, steps, time, device, sha256).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..digits.net import count_parameters
from ..digits.objective import QuickELBO, ScheduleTable, vlb_terms
from ..external.unet import UNetModel
from ..files import Terminated, atomic_write, claim_output, signals_ignored, sigterm_raises
from ..gaussian import predict_x0, q_sample
from ..model import DDPM
from ..schedule import NoiseSchedule
from ..types import VarianceKind
from . import data as D

T_DEFAULT = 4000
CHECKPOINT_FORMAT = 1


@dataclass
class Recipe:
    """Everything that defines one photos model's training run (``steps`` is only where it stops)."""

    name: str
    learn_sigma: bool
    steps: int = 60_000
    image_size: int = 32
    batch_size: int = 32
    lr: float = 2e-4
    warmup: int = 500
    ema_decay: float = 0.9995
    eval_every: int = 2000
    vlb_weight: float = 0.001
    flip: bool = True
    # the UNet (improved-diffusion's flags, scaled down from the CIFAR-10 model's 128 / (1,2,2,2) / 3 / 16,8)
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_at: tuple[int, ...] = (8,)  # spatial sizes with self-attention, as improved-diffusion's "16,8"
    num_heads: int = 2
    dropout: float = 0.3  # the CIFAR-10 model's value; the train split holds about 1000 independent crops
    use_scale_shift_norm: bool = True
    T: int = T_DEFAULT
    quick_strata: int = 32

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint: every field but the stopping point."""
        out = dataclasses.asdict(self)
        out.pop("steps")
        out["channel_mult"], out["attention_at"] = list(self.channel_mult), list(self.attention_at)
        return out


RECIPES = {
    "photos-simple": Recipe("photos-simple", learn_sigma=False),
    "photos-hybrid": Recipe("photos-hybrid", learn_sigma=True),
}


def unet_config(recipe: Recipe) -> dict[str, Any]:
    """Keyword arguments of :class:`~dpddpm.external.unet.UNetModel` for this recipe."""
    return {
        "in_channels": 3,
        "model_channels": recipe.model_channels,
        "out_channels": 6 if recipe.learn_sigma else 3,
        "num_res_blocks": recipe.num_res_blocks,
        "attention_resolutions": [recipe.image_size // r for r in recipe.attention_at],
        "dropout": recipe.dropout,
        "channel_mult": list(recipe.channel_mult),
        "num_heads": recipe.num_heads,
        "use_scale_shift_norm": recipe.use_scale_shift_norm,
    }


def make_model(recipe: Recipe, variance: VarianceKind | None = None) -> DDPM:
    """A fresh DDPM around a new UNet for this recipe (time input ``rescaled``, clipped x^_0)."""
    net = UNetModel(**unet_config(recipe))
    variance = variance or ("learned_range" if recipe.learn_sigma else "fixed_small")
    return DDPM(
        net,
        NoiseSchedule.cosine(recipe.T),
        variance,
        time_input="rescaled",
        data_shape=(3, recipe.image_size, recipe.image_size),
        num_bins=D.NUM_BINS,
        clip_denoised=True,
        outputs_variance=recipe.learn_sigma,
    )


def tensor_sha256(x: torch.Tensor) -> str:
    """Checksum of a tensor's values (float32, C order): a fingerprint of training or selection data."""
    return hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


@dataclass
class State:
    """The mutable part of a run, all of it saved in a checkpoint."""

    step: int
    best_score: float = math.inf
    best_step: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0  # training time over all runs so far
    step_time_s: float = 0.0  # time in training steps only (not evaluations or saves)


class Trainer:
    """One training run of a recipe on given data; see the module docstring."""

    def __init__(
        self,
        recipe: Recipe,
        train_data: torch.Tensor,
        select_data: torch.Tensor,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.recipe, self.seed, self.device = recipe, seed, torch.device(device)
        shape = (3, recipe.image_size, recipe.image_size)
        for what, x in (("training", train_data), ("selection", select_data)):
            if tuple(x.shape[1:]) != shape:
                raise ValueError(f"{what} data have shape {tuple(x.shape)}; the recipe needs (N, *{shape})")
        self.fingerprints = {"train": tensor_sha256(train_data), "selection": tensor_sha256(select_data)}
        torch.manual_seed(seed)  # the weights' initialisation, then dropout
        self.model = make_model(recipe).to(self.device)
        self.net = self.model.net
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.sched = self.model.schedule
        self.tab = ScheduleTable(self.sched, self.device)
        self.train_x = train_data.to(self.device)
        self.quick = QuickELBO(self.sched, select_data, strata=recipe.quick_strata, device=self.device)
        self.variances: tuple[VarianceKind, ...] = (
            ("learned_range",) if recipe.learn_sigma else ("fixed_small", "fixed_large")
        )
        self.opt = torch.optim.Adam(self.net.parameters(), lr=recipe.lr)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.state = State(step=0)

    # -- one step -------------------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        r = self.recipe
        return r.lr * min(1.0, (step + 1) / r.warmup) if r.warmup > 0 else r.lr

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch x0 (B, 3, H, W) in [-1, 1]: L_simple, plus L_vlb's term for hybrid."""
        r, B = self.recipe, x0.shape[0]
        t = torch.randint(1, r.T + 1, (B,), generator=self.gen, device=self.device)
        noise = torch.randn(x0.shape, generator=self.gen, device=self.device)
        x_t = q_sample(self.sched, t, x0, noise).float()
        out = self.net(x_t, self.model.net_time(t))
        eps = out[:, :3]
        loss = (eps - noise).pow(2).mean()
        if r.learn_sigma:  # L_vlb trains only the variance: the mean is detached
            x0_hat = predict_x0(self.sched, t, x_t, eps.detach(), clip=True).reshape(B, -1)
            v = out[:, 3:].reshape(B, -1)
            vb = vlb_terms(self.tab, t, x0.reshape(B, -1).double(), x0_hat, v, "learned_range", D.NUM_BINS)
            loss = loss + (r.vlb_weight * r.T) * vb.mean().float()
        return loss

    def batch(self) -> torch.Tensor:
        """B training images drawn uniformly with replacement, each flipped left-right with probability 1/2."""
        B = self.recipe.batch_size
        idx = torch.randint(0, self.train_x.shape[0], (B,), generator=self.gen, device=self.device)
        x0 = self.train_x[idx]
        if self.recipe.flip:
            flip = torch.rand(B, generator=self.gen, device=self.device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        return x0

    def step(self) -> float:
        """One optimisation step and EMA update; returns the loss."""
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.state.step)
        self.net.train()
        loss = self.loss(self.batch())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            d = min(self.recipe.ema_decay, (1.0 + self.state.step) / (10.0 + self.state.step))
            torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.net.parameters()], 1.0 - d)
        self.state.step += 1
        return float(loss.detach())

    # -- evaluation -----------------------------------------------------------------------------------------

    def ema_model(self, variance: VarianceKind) -> DDPM:
        m = self.model
        return DDPM(
            self.ema,
            self.sched,
            variance,
            time_input=m.time_input,
            data_shape=m.data_shape,
            num_bins=m.num_bins,
            outputs_variance=self.recipe.learn_sigma,
        )

    @torch.no_grad()
    def evaluate(self, loss: float) -> dict[str, float]:
        """The EMA's quick ELBO on the selection split; keeps the best EMA weights."""
        self.ema.eval()
        q = self.quick(self.ema_model(self.variances[0]), self.variances, batch_size=512)
        score = min(q.values())
        st = self.state
        st.history.append({"step": st.step, "loss": loss, **{f"quick_{k}": v for k, v in q.items()}})
        if score < st.best_score:
            st.best_score, st.best_step = score, st.step
            st.best_state = {k: v.detach().float().cpu().clone() for k, v in self.ema.state_dict().items()}
        return q

    # -- checkpoints ----------------------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "recipe": self.recipe.identity(),
            "seed": self.seed,
            "fingerprints": self.fingerprints,
            "state": dataclasses.asdict(self.state) | {"best_state": self.state.best_state},
            "net": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }

    def save(self, path: Path) -> None:
        ckpt = self.checkpoint()
        with signals_ignored():  # a second Ctrl-C cannot abort the save that the first one triggered
            atomic_write(path, lambda fh: torch.save(ckpt, fh))

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint of the same recipe, seed and data; anything else is refused."""
        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise ValueError(f"the checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
        problems = []
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            problems.append(f"format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        if ckpt.get("recipe") != self.recipe.identity():
            theirs, ours = ckpt.get("recipe") or {}, self.recipe.identity()
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            detail = ", ".join(f"{k}: checkpoint {theirs.get(k)!r}, this run {ours.get(k)!r}" for k in diff)
            problems.append(f"another recipe ({detail})")
        if ckpt.get("seed") != self.seed:
            problems.append(f"seed {ckpt.get('seed')}, this run {self.seed}")
        if ckpt.get("fingerprints") != self.fingerprints:
            problems.append("other training or selection data")
        if problems:
            raise ValueError(f"cannot resume from {path}: " + "; ".join(problems))
        self.net.load_state_dict(ckpt["net"])
        self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["opt"])
        self.gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self.state = State(**ckpt["state"])

    # -- the run --------------------------------------------------------------------------------------------

    def run(self, steps: int, ckpt_path: Path, *, save_every: float = 600.0, progress: bool = True) -> None:
        """Train until ``steps`` steps in all, evaluating and saving along the way (and on Ctrl-C / SIGTERM)."""
        st, r = self.state, self.recipe
        if steps < st.step:
            raise ValueError(f"the checkpoint is at step {st.step}, past --steps {steps}")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=st.step, desc=r.name, unit="step")
        last_save, loss = time.monotonic(), math.nan
        start = time.monotonic()
        try:
            with sigterm_raises():
                while st.step < steps:
                    t0 = time.monotonic()
                    loss = self.step()
                    st.step_time_s += time.monotonic() - t0
                    if st.step % r.eval_every == 0 or st.step == steps:
                        self.evaluate(loss)
                        if bar is not None:
                            bar.set_postfix(loss=f"{loss:.4f}", best=f"{st.best_score:.3f}@{st.best_step}")
                    if bar is not None:
                        bar.update(1)
                    if st.step % r.eval_every == 0 or time.monotonic() - last_save > save_every:
                        st.elapsed_s += time.monotonic() - start
                        start = time.monotonic()
                        self.save(ckpt_path)
                        last_save = time.monotonic()
        except (KeyboardInterrupt, Terminated):
            st.elapsed_s += time.monotonic() - start
            self.save(ckpt_path)
            print(f"interrupted at step {st.step}: saved {ckpt_path}; continue with --resume")
            raise
        finally:
            if bar is not None:
                bar.close()
        st.elapsed_s += time.monotonic() - start
        self.save(ckpt_path)


def _weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, buf)
    return buf.getvalue()


def model_card(trainer: Trainer, weights: bytes, variance: VarianceKind, quick_best: dict[str, float]) -> dict:
    """The model card of a finished run (see the module docstring)."""
    r, st = trainer.recipe, trainer.state
    meta = D.photos_metadata()
    n_steps_timed = max(1, st.step)
    return {
        "name": r.name,
        "dpddpm_version": __version__,
        "paper": "Watson et al. 2021 (arXiv 2106.03802); models as Nichol & Dhariwal 2021 (improved-diffusion)",
        "data": {
            "source": "tiny photographs (dpddpm.photos.data): crops of photographs shipped by scikit-image, "
            "scikit-learn and matplotlib",
            "image_size": r.image_size,
            "scaling": "x / 127.5 - 1",
            "num_bins": D.NUM_BINS,
            "shape": [3, r.image_size, r.image_size],
            "scales": meta["scales"],
            "strides": meta["strides"],
            "splits": {k: {key: v[key] for key in ("photographs", "N", "sha256")} for k, v in meta["splits"].items()},
            "non_overlapping_crops": meta["non_overlapping_total"],
            "photographs": [
                {k: p[k] for k in ("name", "package", "file", "licence", "statement", "attribution", "split", "sha256")}
                for p in meta["photographs"]
            ],
            "package_versions": meta["versions"],
            "fingerprints": trainer.fingerprints,
            "augmentation": "random horizontal flips" if r.flip else "none",
        },
        "schedule": "cosine",
        "T": r.T,
        "variance": variance,
        "time_input": "rescaled",
        "clip_denoised": True,
        "net": {
            "class": "dpddpm.external.unet.UNetModel",
            **unet_config(r),
            "parameters": count_parameters(trainer.ema),
            "weights_bytes": len(weights),
        },
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "training": {
            "recipe": r.identity() | {"steps": st.step},
            "loss": "L_hybrid = L_simple + 0.001 L_vlb (mean detached in L_vlb)"
            if r.learn_sigma
            else "L_simple (MSE of epsilon)",
            "optimizer": "Adam",
            "lr_schedule": f"linear warm-up over {r.warmup} steps, then constant",
            "grad_clip": 1.0,
            "t_sampling": "uniform on 1..T",
            "seed": trainer.seed,
            "device": str(trainer.device)
            + (f" ({torch.cuda.get_device_name(trainer.device)})" if trainer.device.type == "cuda" else ""),
            "threads": torch.get_num_threads(),
            "train_time_s": round(st.elapsed_s, 1),
            "step_time_s": round(st.step_time_s, 1),
            "seconds_per_step": round(st.step_time_s / n_steps_timed, 4),
            "selected_step": st.best_step,
            "selection": "EMA weights with the lowest quick ELBO (stratified, fixed noise, "
            f"{r.quick_strata} t's + decoder per image) on the selection split, every {r.eval_every} steps",
            "history": st.history,
        },
        "selection_quick_elbo_bpd": quick_best,
    }


def finish(trainer: Trainer, out: Path) -> dict:
    """Write the best EMA weights and the model card; returns the card."""
    st = trainer.state
    if st.best_state is None:
        raise ValueError("no evaluation has run: nothing to select")
    trainer.ema.load_state_dict(st.best_state)
    trainer.ema.eval()
    quick_best = trainer.quick(trainer.ema_model(trainer.variances[0]), trainer.variances, batch_size=512)
    variance = min(quick_best, key=quick_best.get)
    weights = _weights_bytes(st.best_state)
    card = model_card(trainer, weights, variance, quick_best)
    name = trainer.recipe.name
    atomic_write(out / f"{name}.pt", lambda fh: fh.write(weights))
    atomic_write(out / f"{name}.json", lambda fh: fh.write((json.dumps(card, indent=2) + "\n").encode()))
    return card


def train(
    recipe: Recipe,
    out: Path,
    *,
    steps: int | None = None,
    resume: bool = False,
    seed: int = 0,
    device: str = "cpu",
    train_data: torch.Tensor | None = None,
    select_data: torch.Tensor | None = None,
    save_every: float = 600.0,
    progress: bool = True,
) -> dict:
    """Train (or resume) to ``steps`` (default: the recipe's), then write weights and card; returns the card.

    ``train_data`` and ``select_data`` default to the photos train and selection splits at the recipe's size
    (the train split needs scikit-image; tests pass small tensors instead).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = recipe.steps if steps is None else steps
    if train_data is None:
        train_data = D.photos_split("train", recipe.image_size)
    if select_data is None:
        select_data = D.photos_split("selection", recipe.image_size)
    ckpt_path = out / f"{recipe.name}.ckpt.pt"
    with claim_output(ckpt_path):
        trainer = Trainer(recipe, train_data, select_data, seed=seed, device=device)
        if resume:
            if not ckpt_path.is_file():
                raise FileNotFoundError(f"--resume: there is no checkpoint {ckpt_path}; start without --resume")
            trainer.restore(ckpt_path)
        elif ckpt_path.exists():
            raise FileExistsError(f"{ckpt_path} exists: continue it with --resume, or choose another --out")
        trainer.run(steps, ckpt_path, save_every=save_every, progress=progress)
        card = finish(trainer, out)
    card["checkpoint"] = str(ckpt_path)
    return card


def load_trained(folder: str | Path, name: str, device: str | torch.device = "cpu") -> DDPM:
    """A finished run's model (``<folder>/<name>.pt`` and ``.json``) as a DDPM in eval mode."""
    folder = Path(folder)
    card = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    cfg = {k: v for k, v in card["net"].items() if k not in ("class", "parameters", "weights_bytes")}
    net = UNetModel(**cfg)
    state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    size = int(card["data"]["image_size"])
    model = DDPM(
        net,
        NoiseSchedule.cosine(int(card["T"])),
        card["variance"],
        time_input=card["time_input"],
        data_shape=(3, size, size),
        num_bins=int(card["data"]["num_bins"]),
        clip_denoised=bool(card["clip_denoised"]),
        outputs_variance=cfg["out_channels"] == 6,
    )
    return model.eval().to(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dpddpm.photos.train", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, required=True, help="output folder: checkpoint, weights, card")
    parser.add_argument("--steps", type=int, default=None, help="total training steps (default: the recipe's)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/<name>.ckpt.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (deterministic on one thread) or cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (determinism is for one thread)")
    parser.add_argument("--image-size", type=int, default=None, choices=D.SIZES)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--save-every", type=float, default=600.0, help="seconds between checkpoints")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = copy.deepcopy(RECIPES[args.name])
    for name, value in (
        ("image_size", args.image_size),
        ("batch_size", args.batch_size),
        ("eval_every", args.eval_every),
    ):
        if value is not None:
            setattr(recipe, name, value)
    try:
        card = train(
            recipe,
            args.out,
            steps=args.steps,
            resume=args.resume,
            seed=args.seed,
            device=args.device,
            save_every=args.save_every,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, FileExistsError, ModuleNotFoundError, ValueError) as exc:  # user errors: no traceback
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the checkpoint is saved (the run said where)
        parser.exit(143 if isinstance(exc, Terminated) else 130)
    print(json.dumps({"name": card["name"], "variance": card["variance"], **card["selection_quick_elbo_bpd"]}))


if __name__ == "__main__":
    main()
