"""The cost-matrix driver: against the closed form of an exact denoiser; independent of batch size and row shards."""

import math

import numpy as np
import pytest
from toy_models import (
    LN2,
    assert_costs_close,
    discrete_data,
    gaussian_data,
    gaussian_model,
    gaussian_posterior_var,
    tiny_model,
)

import dpddpm


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_gaussian_cost_matrix_matches_closed_form(variance):
    """x_0 ~ N(mu, s^2): with the exact denoiser, E||x0 - x^0||^2 / D is the posterior variance, so every
    expected edge cost is known; the estimate must agree within its reported standard error."""
    mu, s, T = 0.1, 0.2, 30
    model = gaussian_model(T=T, mu=mu, s=s, variance=variance)
    data = gaussian_data(3000, mu, s)
    costs = dpddpm.cost_matrix(model, data, batch_size=4096, progress=False, seed=3)
    sched = model.schedule
    z = []
    for t in range(2, T + 1):
        for s_ in range(1, t):
            j = sched.jump(t, s_)
            delta = math.log(j.beta / j.beta_post)
            r = j.c1**2 / j.beta_post
            pv = gaussian_posterior_var(sched, t, s)
            if variance == "fixed_small":
                expected = 0.5 * r * pv / LN2
            else:
                expected = 0.5 * (delta - 1 + math.exp(-delta) + r * math.exp(-delta) * pv) / LN2
            z.append((costs.kl[t, s_] - expected) / costs.stderr[t, s_])
    z = np.abs(np.array(z))
    assert np.all(np.isfinite(z))
    assert z.max() < 4.5, z.max()
    assert np.mean(z < 2) > 0.85  # about 95 % for correct standard errors; entries in a row are correlated


def test_batch_size_and_row_sharding_do_not_change_the_result(tmp_path):
    model = tiny_model(T=10)
    data = discrete_data(23)
    full = dpddpm.cost_matrix(model, data, batch_size=64, progress=False, seed=2)
    small = dpddpm.cost_matrix(model, data, batch_size=7, progress=False, seed=2)
    # Batches split rows differently: the float32 network's outputs move by ~1e-7 with the batch shape, and
    # each batch fits its own Chebyshev interval, so agreement is to round-off, not bit for bit.
    assert_costs_close(small, full)
    parts = [
        dpddpm.cost_matrix(model, data, batch_size=16, progress=False, seed=2, rows=r)
        for r in (range(1, 4), range(4, 11))
    ]
    assert not parts[0].is_complete
    merged = dpddpm.merge_costs(parts)
    assert merged.is_complete
    np.testing.assert_allclose(merged.kl, full.kl, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(merged.stderr, full.stderr, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(merged.decoder, full.decoder, rtol=1e-6, equal_nan=True)
