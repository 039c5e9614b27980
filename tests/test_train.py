"""Training of the bundled digits models: data split, baseline, the vectorised ELBO terms, a smoke run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import dpddpm
from dpddpm.digits.data import SPLIT_SIZES, categorical_baseline_bpd, digits_split, split_indices
from dpddpm.digits.net import DigitsNet
from dpddpm.digits.objective import ScheduleTable, vlb_terms
from dpddpm.digits.train import Recipe, make_model, train
from dpddpm.gaussian import predict_x0, q_sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_split_is_fixed_disjoint_and_scaled():
    idx = split_indices()
    allidx = np.concatenate([idx[k] for k in SPLIT_SIZES])
    assert sorted(allidx.tolist()) == list(range(1797))
    for name, size in SPLIT_SIZES.items():
        x = digits_split(name)
        assert x.shape == (size, 1, 8, 8) and x.dtype == torch.float32
        assert float(x.min()) >= -1 and float(x.max()) <= 1
        levels = (x + 1) * 8
        assert torch.allclose(levels, levels.round())
    with pytest.raises(ValueError, match="train"):
        digits_split("validation")


def test_categorical_baseline_is_about_2_4_bits():
    bpd, se = categorical_baseline_bpd(digits_split("train"), digits_split("test"))
    assert 2.2 < bpd < 2.6 and 0 < se < 0.05


def test_net_x0_is_exact_at_small_t_and_eps_roundtrips():
    """At t = 1 the noise is ~1e-3 of a level: the per-pixel posterior term must give x_0 back exactly."""
    sched = dpddpm.NoiseSchedule.cosine(4000)
    net = DigitsNet(sched.alpha_bar, learn_sigma=True)
    x0 = digits_split("test")[:16]
    for t in (1, 5, 10):  # noise std <= 0.011, a sixth of half a level
        x_t = q_sample(sched, t, x0, torch.randn(x0.shape, dtype=torch.float64)).float()
        out = net(x_t, torch.full((16,), t - 1))
        assert out.shape == (16, 2, 8, 8)
        x0_hat = predict_x0(sched, t, x_t.double(), out[:, :1], clip=False)
        assert torch.allclose(x0_hat, x0.double(), atol=1e-7)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_vlb_terms_agree_with_edge_bpd(variance):
    torch.manual_seed(0)
    sched = dpddpm.NoiseSchedule.cosine(4000)
    tab = ScheduleTable(sched, torch.device("cpu"))
    x0 = digits_split("test")[:8].double()
    for t in (1, 2, 37, 1000, 4000):
        x_t = q_sample(sched, t, x0, torch.randn(x0.shape, dtype=torch.float64))
        eps = torch.randn(x0.shape, dtype=torch.float64)
        v = torch.randn(x0.shape, dtype=torch.float64) if variance == "learned_range" else None
        ref = dpddpm.edge_bpd(sched, t, t - 1, x0, x_t, eps, v, variance=variance, num_bins=17)
        tt = torch.full((8,), t)
        x0_hat = predict_x0(sched, tt, x_t.reshape(8, 64), eps.reshape(8, 64), clip=True)  # a batch of t
        ours = vlb_terms(tab, tt, x0.reshape(8, 64), x0_hat, None if v is None else v.reshape(8, 64), variance)
        assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-12), (t, ours, ref)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_vlb_terms_of_a_mixed_batch_of_t(variance):
    """Training draws a different t per sample, the decoder included: each term equals its own edge_bpd."""
    sched = dpddpm.NoiseSchedule.cosine(4000)
    tab = ScheduleTable(sched, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    x0 = digits_split("test")[:6].double().reshape(6, 64)
    t = torch.tensor([1, 4000, 2, 1, 37, 1000])
    x_t = q_sample(sched, t, x0, torch.randn(6, 64, generator=g, dtype=torch.float64)).float()
    eps = torch.randn(6, 64, generator=g)
    v = torch.randn(6, 64, generator=g) if variance == "learned_range" else None
    ours = vlb_terms(tab, t, x0, predict_x0(sched, t, x_t, eps, clip=True), v, variance)
    for i, ti in enumerate(t.tolist()):
        ref = dpddpm.edge_bpd(
            sched,
            ti,
            ti - 1,
            x0[i : i + 1],
            x_t[i : i + 1].double(),
            eps[i : i + 1],
            None if v is None else v[i : i + 1],
            variance=variance,
            num_bins=17,
        )
        assert torch.allclose(ours[i], ref[0], rtol=1e-12, atol=0), (ti, ours[i], ref)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_training_smoke(tmp_path, learn_sigma):
    """A few steps of a tiny configuration (T = 50) run end to end and write loadable weights and a card."""
    name = "digits-hybrid" if learn_sigma else "digits-simple"
    recipe = Recipe(
        name, learn_sigma=learn_sigma, steps=6, batch_size=16, warmup=2, eval_every=3, hidden=16, blocks=1, rank=2, T=50
    )
    card = train(recipe, tmp_path, seed=0, device="cpu", progress=False)
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert saved["training"]["steps"] == 6 and saved["T"] == 50
    assert math.isfinite(saved["test_elbo"]["bpd"]) and saved["test_elbo"]["stderr"] > 0
    state = torch.load(tmp_path / f"{name}.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())
    model = make_model(recipe, card["variance"])
    model.net.load_state_dict(state, strict=True)
    eps, v = model.predict(digits_split("test")[:4], torch.tensor([1, 10, 25, 50]))
    assert eps.shape == (4, 1, 8, 8) and (v is not None) == learn_sigma
