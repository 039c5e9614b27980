"""One row of the cost matrix per network call: every entry against the direct per-edge terms, and the Chebyshev
expansion of the learned-variance rows against the direct per-dimension sum."""

import math

import numpy as np
import pytest
import torch
from toy_models import LN2, discrete_data, tiny_model

import dpddpm
from dpddpm.costs import row_generator
from dpddpm.rowcosts import KLRow


def _direct_row_terms(model, data, seed, t):
    """Per-sample edge costs of row t computed one edge at a time with edge_bpd (no shortcuts)."""
    sched = model.schedule
    N = data.shape[0]
    x0 = data.double()
    noise = torch.randn(
        N, x0[0].numel(), generator=row_generator(seed, t, torch.device("cpu")), dtype=torch.float64
    ).reshape(x0.shape)
    a = float(sched.alpha_bar[t])
    x_t = (math.sqrt(a) * x0 + math.sqrt(1 - a) * noise).float()
    eps, v = model.predict(x_t, t)
    kw = dict(variance=model.variance, num_bins=model.num_bins, clip_denoised=model.clip_denoised)
    if t == 1:
        return torch.stack(
            [dpddpm.edge_bpd(sched, 1, 0, x0, x_t.double(), eps, v, t_above=u, **kw) for u in range(2, sched.T + 1)],
            dim=1,
        )
    return torch.stack([dpddpm.edge_bpd(sched, t, s, x0, x_t.double(), eps, v, **kw) for s in range(1, t)], 1)


@pytest.mark.parametrize("variance", ["learned_range", "fixed_small", "fixed_large"])
def test_cost_matrix_equals_direct_edge_terms(variance):
    """Every entry, decoder included, equals the mean of edge_bpd on the same noise (and its std error)."""
    model = tiny_model(T=12, variance=variance)
    data = discrete_data(37)
    costs = dpddpm.cost_matrix(model, data, batch_size=50, progress=False, seed=5)
    for t in range(1, 13):
        vals = _direct_row_terms(model, data, 5, t)
        mean = vals.mean(0).numpy()
        se = (vals.std(0) / math.sqrt(len(data))).numpy()
        if t == 1:
            np.testing.assert_allclose(costs.decoder[2:], mean, rtol=1e-6)
            np.testing.assert_allclose(costs.decoder_stderr[2:], se, rtol=1e-5)
        else:
            np.testing.assert_allclose(costs.kl[t, 1:t], mean, rtol=1e-6, atol=1e-12)
            np.testing.assert_allclose(costs.stderr[t, 1:t], se, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(
        costs.prior[1:], dpddpm.prior_bpd(model.schedule, np.arange(1, 13), data).mean(0).numpy(), rtol=1e-12
    )
    assert np.isnan(costs.kl[5, 5]) and np.isnan(costs.kl[3, 0])


@pytest.mark.parametrize("t", [2, 50, 1000, 4000])
def test_learned_variance_chebyshev_is_exact(t):
    """The moment expansion agrees with the direct per-dimension sum to 1e-6 relative (DESIGN target),
    on the real T = 4000 cosine schedule with f beyond [0, 1]."""
    sched = dpddpm.NoiseSchedule.cosine(4000)
    g = torch.Generator().manual_seed(t)
    B, D = 64, 3072
    v = torch.rand(B, D, generator=g, dtype=torch.float64) * 2.4 - 1.2
    err2 = (torch.randn(B, D, generator=g, dtype=torch.float64) * 0.05) ** 2
    row = KLRow(sched, t, "learned_range", D, torch.device("cpu"))
    row.add(err2, v)
    mean, se = row.stats.result()
    s = np.arange(1, t)
    j = sched.jump(t, s)
    delta = torch.as_tensor(np.log(j.beta / j.beta_post))[None, None, :]
    r = torch.as_tensor(j.c1**2 / j.beta_post)[None, None, :]
    f = ((v + 1) / 2)[:, :, None]
    cols = slice(None) if t < 200 else np.r_[0:20, t - 21 : t - 1]  # the direct sum is big: check the ends
    per_dim = 0.5 * (
        f * delta[..., cols]
        + torch.expm1(-f * delta[..., cols])
        + r[..., cols] * err2[:, :, None] * torch.exp(-f * delta[..., cols])
    )
    direct = per_dim.mean(1) / LN2  # (B, S)
    np.testing.assert_allclose(mean[cols], direct.mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(se[cols], (direct.std(0) / math.sqrt(B)).numpy(), rtol=1e-4)


def test_x_minus_1_plus_exp_neg_keeps_its_digits_for_tiny_x():
    """The constant of fixed_large and analytic rows, x - 1 + e^-x, against 50-digit arithmetic: the direct
    form keeps about 9 of 16 digits at x = 1e-9 and 3 at 1e-12 (short jumps near t = T); the package's all."""
    import mpmath

    from dpddpm.rowcosts import x_minus_1_plus_exp_neg

    mpmath.mp.dps = 50
    xs = torch.tensor([1e-15, 1e-9, 1e-6, 1e-3, 2.9e-3, 3.1e-3, 0.1, 1.0, 20.0], dtype=torch.float64)
    got = x_minus_1_plus_exp_neg(xs)
    for x, value in zip(xs.tolist(), got.tolist()):
        exact = float(mpmath.mpf(x) - 1 + mpmath.exp(-mpmath.mpf(x)))
        assert abs(value - exact) <= 1e-12 * exact, (x, value, exact)
    direct = float(xs[1] + torch.expm1(-xs[1]))
    assert abs(direct - 5e-19) > 1e-8 * 5e-19  # what the naive form gives: the reason for the series
