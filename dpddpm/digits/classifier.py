"""A small classifier for the 8x8 digits, whose penultimate layer gives the features of a Fréchet distance.

The bundled weights (``weights/digits-classifier.pt``, a plain float32 state dict) were trained on the
"train" split only by ``python -m dpddpm.digits.train_classifier``; their card (``digits-classifier.json``)
records the architecture, the recipe, the accuracies on the "selection" and "test" splits, and the sha256 of
the ``.pt`` file, which :func:`load_classifier` checks before loading.

Architecture (:class:`DigitsClassifier`), input (N, 1, 8, 8) in [-1, 1]:

    conv 3x3, 1 -> 32, ReLU        (N, 32, 8, 8)
    conv 3x3, 32 -> 64, ReLU       (N, 64, 8, 8)
    max-pool 2x2                   (N, 64, 4, 4)
    linear 1024 -> 32, ReLU        (N, 32)   the features
    linear 32 -> 10                (N, 10)   the logits

Why 32 features. A Fréchet distance fits a mean and a full covariance to each feature set: D + D (D + 1) / 2
numbers. Against the 300 reference images of a split, D = 32 leaves about 9 images per dimension (528
covariance entries); at D = 64 the covariance would have 2,080 entries from the same 300 images, and the
upward bias of the distance at finite N (roughly proportional to D / N) and its noise floor would grow with
them. 32 units are still enough for the head to reach the card's test accuracy from them alone. About 6 of the
32 ReLU units never fire on real digits (they can on damaged images); on real sets their zero variance adds
nothing to the distance.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .data import DATA_SHAPE
from .pretrained import REINSTALL

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11
    from importlib.abc import Traversable

CLASSIFIER_NAME = "digits-classifier"
NUM_CLASSES = 10
RETRAIN = "python -m dpddpm.digits.train_classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    """The architecture of :class:`DigitsClassifier` (saved in the card, so that loading can rebuild it)."""

    channels: tuple[int, int] = (32, 64)
    features: int = 32


class DigitsClassifier(nn.Module):
    """A two-layer CNN for (N, 1, 8, 8) digits in [-1, 1] with a ``features``-unit penultimate layer.

    ``forward`` returns logits (N, 10); :meth:`features` the penultimate activations (N, features), float32.
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.cfg = config or ClassifierConfig()
        c1, c2 = self.cfg.channels
        side = DATA_SHAPE[1] // 2  # after one 2x2 max-pool
        self.body = nn.Sequential(
            nn.Conv2d(DATA_SHAPE[0], c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * side * side, self.cfg.features),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.cfg.features, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, features) of images (N, 1, 8, 8)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) of images (N, 1, 8, 8)."""
        return self.head(self.body(x))

    def config(self) -> dict:
        """The architecture as a JSON-ready dict (what the card stores under ``net``)."""
        cfg = asdict(self.cfg)
        return {**cfg, "channels": list(cfg["channels"])}


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images (N, 1, 8, 8) whose arg-max logit equals their label (N,); the model is put in eval mode."""
    model.eval()
    return float((model(images).argmax(dim=1) == labels).double().mean())


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _paths(weights: str | Path | None) -> tuple[Traversable, Traversable]:
    """(the .pt file, its card: the .json beside it with the same stem); package data by default."""
    if weights is None:
        folder = resources.files("dpddpm.digits").joinpath("weights")
        return folder.joinpath(f"{CLASSIFIER_NAME}.pt"), folder.joinpath(f"{CLASSIFIER_NAME}.json")
    pt = Path(weights)
    return pt, pt.with_suffix(".json")


def _missing(what: str, file: Traversable, bundled: bool) -> FileNotFoundError:
    fix = REINSTALL if bundled else "it sits beside the weights file, with the same name and suffix .json"
    return FileNotFoundError(f"the {what} {file} is missing; {fix}")


def classifier_card(weights: str | Path | None = None) -> dict:
    """The card of the classifier weights ``weights`` (a ``.pt`` path; default: the bundled ones) as a dict."""
    card = _paths(weights)[1]
    if not card.is_file():
        raise _missing("classifier card", card, weights is None)
    try:
        return json.loads(card.read_text(encoding="utf-8"))
    except ValueError:  # JSONDecodeError or UnicodeDecodeError
        raise ValueError(
            f"the classifier card {card} is not valid JSON; reinstall dpddpm or retrain: {RETRAIN}"
        ) from None


def load_classifier(weights: str | Path | None = None, device: str | torch.device = "cpu") -> DigitsClassifier:
    """Load classifier weights (default: the bundled ones) after checking them against their card.

    ``weights`` is a ``.pt`` state dict; its card is the ``.json`` beside it. The file's sha256 must equal the
    card's, so a damaged copy, or weights paired with another run's card, is refused with a ValueError. The
    bytes that were hashed are the bytes that are loaded.
    Returns a :class:`DigitsClassifier` in eval mode on ``device``.
    """
    pt, _ = _paths(weights)
    card = classifier_card(weights)
    if not pt.is_file():
        raise _missing("classifier weights", pt, weights is None)
    blob = pt.read_bytes()
    expected, actual = str(card.get("sha256")), hashlib.sha256(blob).hexdigest()
    if actual != expected:
        raise ValueError(
            f"the classifier weights {pt} do not match their card: their sha256 is {actual[:16]}... but the card "
            f"expects {expected[:16]}...; the file is damaged or belongs to another run: reinstall dpddpm or "
            f"retrain with `{RETRAIN}`"
        )
    try:
        config = ClassifierConfig(channels=tuple(card["net"]["channels"]), features=int(card["net"]["features"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"the classifier card of {pt} has no valid 'net' entry (channels, features)") from None
    model = DigitsClassifier(config)
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the classifier weights {pt} do not fit the architecture in their card: {exc}") from None
    return model.eval().to(device)
