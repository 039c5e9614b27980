"""The training loop of a photos model: batches, the loss, the optimiser and EMA steps, evaluations, saves.

Every step draws a batch uniformly with replacement, flips each image left-right with probability 1/2 (the only
augmentation), draws t uniformly on 1..T and the noise, and takes one Adam step (a linear warm-up, then a constant
rate: a run can be extended by ``--resume --steps`` more) with gradients clipped, then updates the EMA of the
weights. Every ``eval_every`` steps the EMA's quick ELBO on the selection split (fixed noise, stratified t) is
measured and the best EMA weights are kept.

**Deterministic.** One seeded generator draws the batches, flips, t and noise; dropout draws from torch's global
generator, seeded too. Both are in the checkpoint (:mod:`dpddpm.photos.resume`), which is saved every
``save_every`` seconds, at each evaluation, at the end, and on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from ..digits.objective import QuickELBO, ScheduleTable
from ..digits.training import ema_update, hybrid_loss, optimizer_step
from ..files import Terminated, sigterm_raises
from ..gaussian import q_sample
from ..model import DDPM
from ..progress import progress_bar
from ..variances import VarianceKind
from . import resume
from .data import NUM_BINS
from .recipe import Recipe, make_model, wrap
from .resume import State, tensor_sha256


class Trainer:
    """One training run of a recipe on given data: float32 (N, 3, size, size) in [-1, 1] for training and for
    selecting the best EMA weights; see the module docstring."""

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
        self.params = list(self.net.parameters())
        self.opt = torch.optim.Adam(self.params, lr=recipe.lr)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.state = State(step=0)

    # -- one step -------------------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """The learning rate of 0-based ``step``: a linear warm-up over ``warmup`` steps, then constant."""
        r = self.recipe
        return r.lr * min(1.0, (step + 1) / r.warmup) if r.warmup > 0 else r.lr

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch x0 (B, 3, H, W) in [-1, 1]: L_simple, plus L_vlb's term for hybrid."""
        r, B = self.recipe, x0.shape[0]
        t = torch.randint(1, r.T + 1, (B,), generator=self.gen, device=self.device)
        noise = torch.randn(x0.shape, generator=self.gen, device=self.device)
        x_t = q_sample(self.sched, t, x0, noise).float()
        out = self.net(x_t, self.model.net_time(t))  # (B, 3, H, W) epsilon, then 3 channels of v for hybrid
        v = out[:, 3:] if r.learn_sigma else None
        return hybrid_loss(
            self.tab, self.sched, t, x0, x_t, noise, out[:, :3], v, vlb_weight=r.vlb_weight, num_bins=NUM_BINS
        )

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
        self.net.train()
        loss = self.loss(self.batch())
        optimizer_step(self.opt, self.params, loss, self.lr_at(self.state.step))
        ema_update(self.ema, self.net, self.recipe.ema_decay, self.state.step)
        self.state.step += 1
        return float(loss.detach())

    # -- evaluation and checkpoints -------------------------------------------------------------------------

    def ema_model(self, variance: VarianceKind) -> DDPM:
        """The EMA weights as a DDPM with the given variance kind."""
        return wrap(self.ema, self.sched, variance, self.recipe)

    @torch.no_grad()
    def evaluate(self, loss: float) -> dict[str, float]:
        """The EMA's quick ELBO (bits/dim) on the selection split, per variance kind; keeps the best EMA weights."""
        self.ema.eval()
        q = self.quick(self.ema_model(self.variances[0]), self.variances, batch_size=512)
        self.state.record(self.state.step, loss, q, self.ema)
        return q

    def save(self, path: Path) -> None:
        """Write the whole state to ``path`` atomically (:func:`dpddpm.photos.resume.save`)."""
        resume.save(self, path)

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint of the same recipe, seed and data (:func:`dpddpm.photos.resume.restore`)."""
        resume.restore(self, path)

    # -- the run --------------------------------------------------------------------------------------------

    def run(self, steps: int, ckpt_path: Path, *, save_every: float = 600.0, progress: bool = True) -> None:
        """Train until ``steps`` steps in all, evaluating and saving along the way (and on Ctrl-C / SIGTERM).

        ``save_every`` is in seconds; a checkpoint is also saved at every evaluation and at the end.
        """
        st = self.state
        if steps < st.step:
            raise ValueError(f"the checkpoint is at step {st.step}, past --steps {steps}")
        bar = progress_bar(progress, steps, self.recipe.name, unit="step", initial=st.step)
        last_save = start = time.monotonic()
        try:
            with sigterm_raises():
                while st.step < steps:
                    self._timed_step(steps, bar)
                    if st.step % self.recipe.eval_every == 0 or time.monotonic() - last_save > save_every:
                        start = self._save_timed(ckpt_path, start)
                        last_save = time.monotonic()
        except (KeyboardInterrupt, Terminated):
            self._save_timed(ckpt_path, start)
            print(f"interrupted at step {st.step}: saved {ckpt_path}; continue with --resume")
            raise
        finally:
            if bar is not None:
                bar.close()
        self._save_timed(ckpt_path, start)

    def _timed_step(self, steps: int, bar: Any | None) -> None:
        """One step, timed; then the evaluation when one is due (every ``eval_every`` steps, and at ``steps``)."""
        st = self.state
        t0 = time.monotonic()
        loss = self.step()
        st.step_time_s += time.monotonic() - t0
        if st.step % self.recipe.eval_every == 0 or st.step == steps:
            self.evaluate(loss)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", best=f"{st.best_score:.3f}@{st.best_step}")
        if bar is not None:
            bar.update(1)

    def _save_timed(self, path: Path, start: float) -> float:
        """Add the time since ``start`` (monotonic seconds) to the training time, then save; the new start."""
        self.state.elapsed_s += time.monotonic() - start
        now = time.monotonic()  # the save's own time counts towards the next stretch
        self.save(path)
        return now
