"""The bundled digits models: loading, shapes, the model card's held-out ELBO, and the DP beating even strides."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dpddpm
from dpddpm.digits import PRETRAINED, digits_split, load_pretrained, model_card


@pytest.fixture(scope="module")
def models():
    # The full chain is 4000 small calls: one thread avoids OpenMP overhead that dominates on shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {name: load_pretrained(name) for name in PRETRAINED}
    torch.set_num_threads(threads)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="digits-simple.*digits-hybrid"):
        load_pretrained("cifar10")
    with pytest.raises(ValueError, match="known names"):
        model_card("digits")


@pytest.mark.parametrize("name", PRETRAINED)
def test_load_and_predict(models, name):
    model, card = models[name], model_card(name)
    assert model.T == 4000 and model.num_bins == 17 and model.data_shape == (1, 8, 8)
    assert model.variance == card["variance"]
    assert (model.variance == "learned_range") == (name == "digits-hybrid")
    x = digits_split("test")[:5]
    t = torch.tensor([1, 2, 100, 2000, 4000])
    eps, v = model.predict(x, t)
    assert eps.shape == (5, 1, 8, 8) and torch.isfinite(eps).all()
    if name == "digits-hybrid":
        assert v is not None and v.shape == (5, 1, 8, 8) and torch.isfinite(v).all()
    else:
        assert v is None
    assert card["net"]["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PRETRAINED)
def test_full_chain_elbo_matches_model_card(models, name):
    """A fresh full-chain (K = 4000) ELBO on 30 test images agrees with the card's 300-image figure."""
    model, card = models[name], model_card(name)["test_elbo"]
    est = dpddpm.elbo(model, digits_split("test")[:30], np.arange(4000, 0, -1), batch_size=30, seed=123)
    band = max(0.3, 5.0 * est.stderr)
    assert abs(est.bpd - card["bpd"]) < band, (est, card)
    assert card["bpd"] < model_card(name)["baseline_categorical_bpd"]["bpd"] - 0.2


def test_dp_is_not_worse_than_even_stride(models):
    """On held-out data the DP schedule (from a small selection-split matrix) is not worse than the even stride."""
    model = models["digits-hybrid"]
    costs = dpddpm.cost_matrix(model, digits_split("selection")[:16], batch_size=4096, seed=0, progress=False)
    best = dpddpm.optimal_schedules(costs, 32)
    test = digits_split("test")[:150]
    for K in (8, 16, 32):
        dp = dpddpm.elbo(model, test, best.schedule(K), batch_size=150, seed=7)
        even = dpddpm.elbo(model, test, dpddpm.even_schedule(4000, K), batch_size=150, seed=7)
        assert dp.bpd <= even.bpd + 2.0 * math.hypot(dp.stderr, even.stderr), (K, dp, even)


def test_digits_net_stays_finite_under_float16_autocast(models):
    """exp() of the level logits overflowed float16 under CUDA autocast (seen on an H100: 640 NaN outputs);
    CPU autocast to float16 reproduces it, and the expectation now runs in float32 inside the net."""
    model = models["digits-hybrid"]
    x = digits_split("selection")[:64].float()
    t = torch.randint(1, model.T + 1, (64,), generator=torch.Generator().manual_seed(0))
    exact, _ = model.predict(x, t)
    with torch.autocast("cpu", dtype=torch.float16):
        low, _ = model.predict(x, t)
    assert torch.isfinite(low).all()
    assert (low.float() - exact).abs().max() < 0.05
