"""The bundled example: scikit-learn's 8x8 digits, a small DDPM network for them, its training script, and the
two trained models shipped as package data (``weights/``). Retrain with ``python -m dpddpm.digits.train NAME``.
Samples are scored by :mod:`dpddpm.digits.quality` (a digits FID and confidence from a bundled classifier)."""

from .classifier import DigitsClassifier, classifier_card, load_classifier
from .data import categorical_baseline_bpd, digits_labels, digits_split
from .pretrained import PRETRAINED, load_pretrained, model_card

__all__ = [
    "PRETRAINED",
    "DigitsClassifier",
    "categorical_baseline_bpd",
    "classifier_card",
    "digits_labels",
    "digits_split",
    "load_classifier",
    "load_pretrained",
    "model_card",
]
