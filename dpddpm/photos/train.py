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

The pieces: :mod:`~dpddpm.photos.recipe` (the recipes and the model), :mod:`~dpddpm.photos.trainer` (the loop),
:mod:`~dpddpm.photos.resume` (the checkpoint), :mod:`~dpddpm.photos.outputs` (weights, card, loading them back);
this module runs them and is the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from ..files import Terminated, claim_output
from . import data as D
from .outputs import finish, load_trained, model_card
from .recipe import RECIPES, T_DEFAULT, Recipe, make_model, unet_config
from .resume import CHECKPOINT_FORMAT, State, tensor_sha256
from .trainer import Trainer

__all__ = [  # what this module held before its split stays importable from here
    "CHECKPOINT_FORMAT",
    "RECIPES",
    "T_DEFAULT",
    "Recipe",
    "State",
    "Trainer",
    "finish",
    "load_trained",
    "make_model",
    "model_card",
    "tensor_sha256",
    "train",
    "unet_config",
]


def _start(trainer: Trainer, ckpt_path: Path, resume: bool) -> None:
    """Restore the checkpoint for ``--resume``; refuse to start afresh over an existing one."""
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: there is no checkpoint {ckpt_path}; start without --resume")
        trainer.restore(ckpt_path)
    elif ckpt_path.exists():
        raise FileExistsError(f"{ckpt_path} exists: continue it with --resume, or choose another --out")


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

    ``train_data`` and ``select_data`` (float32 (N, 3, size, size) in [-1, 1]) default to the photos train and
    selection splits at the recipe's size (the train split needs scikit-image; tests pass small tensors instead).
    ``save_every`` is in seconds.
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
        _start(trainer, ckpt_path, resume)
        trainer.run(steps, ckpt_path, save_every=save_every, progress=progress)
        card = finish(trainer, out)
    card["checkpoint"] = str(ckpt_path)
    return card


def _parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None) -> None:
    """The command line: train (or resume) one recipe, print its selection quick ELBOs as JSON."""
    parser = _parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fields = ("image_size", "batch_size", "eval_every")  # the recipe fields the options change
    recipe = dataclasses.replace(
        RECIPES[args.name], **{f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    )
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
