"""Analytic (KL-optimal) variances: the formula, the zero-call matrix, freezing, and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from toy_models import assert_costs_close, discrete_data, gaussian_data, gaussian_model, tiny_model

import dpddpm
from dpddpm.analytic import (
    AnalyticVariances,
    analytic_edge_bpd,
    best_decoder_log_variance,
    decoder_nll_bpd,
)
from dpddpm.gaussian import normal_kl
from dpddpm.terms import LN2, edge_bpd


def golden_min(f, lo: float, hi: float, tol: float = 1e-10) -> float:
    """argmin of a unimodal f on [lo, hi] by golden-section search (independent of the package's)."""
    r = (math.sqrt(5) - 1) / 2
    while hi - lo > tol:
        a, b = hi - r * (hi - lo), lo + r * (hi - lo)
        if f(a) <= f(b):
            hi = b
        else:
            lo = a
    return (lo + hi) / 2


def test_snr_gap_is_c1_squared_over_the_posterior_variance():
    sched = dpddpm.NoiseSchedule.cosine(4000)
    t = np.array([2, 10, 100, 1000, 3999, 4000, 4000, 2500])
    s = np.array([1, 3, 99, 10, 1, 3999, 1, 2000])
    j = sched.jump(t, s)
    np.testing.assert_allclose(j.c1**2 / j.beta_post, sched.snr(s) - sched.snr(t), rtol=1e-9)


@pytest.mark.parametrize("t, s", [(2, 1), (40, 39), (400, 100), (3000, 10), (4000, 1)])
def test_optimal_variance_minimises_the_direct_expected_kl(t, s):
    """sigma*^2 = beta~ + c1^2 m minimises the per-dimension KL averaged over errors e, and its minimum is
    1/2 log(1 + (SNR(s) - SNR(t)) m): checked against the direct KL and a 1-D numerical minimisation."""
    sched = dpddpm.NoiseSchedule.cosine(4000)
    j = sched.jump(t, s)
    c1, beta_post = float(j.c1), float(j.beta_post)
    gen = torch.Generator().manual_seed(t)
    e = 0.3 * torch.randn(20_000, dtype=torch.float64, generator=gen) + 0.05  # errors of x^_0, any law
    m = float(e.pow(2).mean())

    def expected_kl(log_var: float) -> float:
        return float(normal_kl(c1 * e, math.log(beta_post), torch.tensor(log_var, dtype=torch.float64)).mean())

    best = golden_min(expected_kl, math.log(beta_post) - 5, math.log(beta_post + c1**2 * m) + 5)
    expected_var = float(AnalyticVariances(np.r_[np.nan, np.full(4000, m)], 0.0).variance(sched, t, s))
    assert math.exp(best) == pytest.approx(expected_var, rel=1e-6)
    optimum = 0.5 * math.log1p((sched.snr(s) - sched.snr(t)) * m)
    assert expected_kl(math.log(expected_var)) == pytest.approx(optimum, rel=1e-9, abs=1e-15)
    assert analytic_edge_bpd(sched, t, s, m) == pytest.approx(optimum / LN2, rel=1e-9, abs=1e-15)
    # neither fixed choice does better (beta~ is optimal only when the denoiser is exact)
    assert expected_kl(math.log(beta_post)) >= optimum and expected_kl(math.log(float(j.beta))) >= optimum


def test_frozen_variance_on_other_data_matches_edge_bpd():
    """At a variance fitted to m_fit, data with error m pay 1/2 [log(1+d m_fit) + (1+d m)/(1+d m_fit) - 1]."""
    model = gaussian_model(T=30, variance="fixed_small")
    data = gaussian_data(500, 0.1, 0.2)
    t, s = 20, 7
    x0 = data.double()
    noise = torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x_t = dpddpm.gaussian.q_sample(model.schedule, t, x0, noise)
    eps, _ = model.predict(x_t.float(), t)
    x0_hat = dpddpm.gaussian.predict_x0(model.schedule, t, x_t, eps.double(), False)
    m = float((x0 - x0_hat).pow(2).mean())
    mse = np.r_[np.nan, np.full(model.T, 2.5 * m)]  # fitted elsewhere, on worse data
    av = AnalyticVariances(mse, math.log(0.01))
    per_image = edge_bpd(
        model.schedule, t, s, x0, x_t, eps.double(), variance="analytic", clip_denoised=False, analytic=av
    )
    assert float(per_image.mean()) == pytest.approx(analytic_edge_bpd(model.schedule, t, s, 2.5 * m, m), rel=1e-9)
    assert float(per_image.mean()) > analytic_edge_bpd(model.schedule, t, s, m)  # the refit would be better


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_zero_call_analytic_matrix_equals_a_full_run_of_the_analytic_model(variance):
    model, data = tiny_model(T=12, variance=variance), discrete_data(40)
    costs = dpddpm.cost_matrix(model, data, progress=False, batch_size=64)
    variances = dpddpm.fit_analytic_variances(model, data, costs)
    assert variances.info.dpddpm_version == dpddpm.__version__  # saved with the variances file
    fast = dpddpm.analytic_costs(costs, variances, model, data)
    full = dpddpm.cost_matrix(dpddpm.with_analytic_variances(model, variances), data, progress=False, batch_size=64)
    assert_costs_close(fast, full)
    assert fast.info.variance == "analytic" and fast.info.weights_fingerprint == full.info.weights_fingerprint
    # in-sample, the analytic edge is the optimum 1/2 log2(1 + d m_t): never worse than a fixed isotropic
    # variance (a learned one varies per image and dimension, so it can win on some edges)
    for t in (3, 8, 12):
        s = np.arange(1, t)
        np.testing.assert_allclose(
            fast.kl[t, 1:t], np.log2(1 + (model.schedule.snr(s) - model.schedule.snr(t)) * costs.mse[t]) / 2
        )
        if variance != "learned_range":
            assert np.all(fast.kl[t, 1:t] <= costs.kl[t, 1:t] + 1e-12)
    # the replay of a schedule on the analytic matrix reproduces its value per image
    best = dpddpm.optimal_schedules(fast, 5)
    analytic_model = dpddpm.with_analytic_variances(model, variances)
    replay = dpddpm.in_sample_elbo(analytic_model, data, fast, best.schedule(4))
    assert replay.bpd == pytest.approx(best.bpd(4), rel=1e-6)


def test_mse_is_recorded_per_row_and_survives_save_merge_and_resume(tmp_path):
    model, data = tiny_model(T=8), discrete_data(24)
    whole = dpddpm.cost_matrix(model, data, progress=False)
    # m_t by hand at one row, with the row's own noise
    t = 5
    x0 = data.double().reshape(24, -1)
    noise = torch.randn(x0.shape, generator=dpddpm.costs.row_generator(0, t, torch.device("cpu")), dtype=torch.float64)
    x_t = dpddpm.gaussian.q_sample(model.schedule, t, x0, noise)
    eps, _ = model.predict(x_t.float().reshape(24, 1, 4, 4), t)
    x0_hat = dpddpm.gaussian.predict_x0(model.schedule, t, x_t, eps.reshape(24, -1).double(), True)
    per_image = (x0 - x0_hat).pow(2).mean(dim=1)
    assert whole.mse[t] == pytest.approx(float(per_image.mean()), rel=1e-6)
    assert whole.mse_stderr[t] == pytest.approx(float(per_image.std() / math.sqrt(24)), rel=1e-5)
    loaded = dpddpm.CostMatrix.load(whole.save(tmp_path / "c.npz"))
    np.testing.assert_array_equal(loaded.mse, whole.mse)
    rows = np.arange(1, 9)
    parts = [dpddpm.cost_matrix(model, data, progress=False, rows=rows[rows % 2 == r]) for r in (0, 1)]
    merged = dpddpm.merge_costs(parts)
    np.testing.assert_allclose(merged.mse, whole.mse, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(merged.mse_stderr, whole.mse_stderr, rtol=1e-5, equal_nan=True)
    halves = [dpddpm.cost_matrix(model, d, progress=False) for d in (data[:12], data[12:])]
    pooled = dpddpm.merge_costs(halves)  # data shards: m_t pooled over images
    np.testing.assert_allclose(pooled.mse[1:], (halves[0].mse[1:] + halves[1].mse[1:]) / 2, rtol=1e-12)
    ckpt = tmp_path / "r.npz"
    dpddpm.cost_matrix(model, data, progress=False, rows=[8, 7, 1], checkpoint=ckpt)
    resumed = dpddpm.cost_matrix(model, data, progress=False, checkpoint=ckpt, resume=True)
    np.testing.assert_allclose(resumed.mse, whole.mse, rtol=1e-6, equal_nan=True)


def test_decoder_variance_minimises_the_decoder_nll():
    gen = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 17, (200, 16), generator=gen)
    x0 = levels.double() / 8 - 1
    x0_hat = (x0 + 0.07 * torch.randn(x0.shape, dtype=torch.float64, generator=gen)).clamp(-1, 1)
    best = best_decoder_log_variance(x0, x0_hat, 17)
    grid = np.linspace(best - 1, best + 1, 2001)
    brute = grid[int(np.argmin([decoder_nll_bpd(x0, x0_hat, float(g), 17) for g in grid]))]
    assert best == pytest.approx(brute, abs=2e-3)
    assert decoder_nll_bpd(x0, x0_hat, best, 17) <= decoder_nll_bpd(x0, x0_hat, float(brute), 17) + 1e-12
    # a Gaussian error of sd 0.07 wider than the bin width (1/8): the optimum is near its variance
    assert math.exp(best) == pytest.approx(0.07**2, rel=0.3)


def test_variances_fitted_on_selection_are_frozen_on_test():
    """Held-out ELBOs use the selection's variances: changing the test images changes nothing upstream, and
    the per-image values of the images both test sets share stay the same (no leakage from test to fit)."""
    model, selection = tiny_model(T=12), discrete_data(40)
    costs = dpddpm.cost_matrix(model, selection, progress=False)
    variances = dpddpm.fit_analytic_variances(model, selection, costs)
    analytic = dpddpm.with_analytic_variances(model, variances)
    test_a = discrete_data(30, seed=5)
    test_b = test_a.clone()
    test_b[20:] = discrete_data(10, seed=9)  # the last ten images differ
    schedule = dpddpm.optimal_schedules(dpddpm.analytic_costs(costs, variances, model, selection), 4).schedule(4)
    a = dpddpm.elbo(analytic, test_a, schedule, seed=1)
    b = dpddpm.elbo(analytic, test_b, schedule, seed=1)
    np.testing.assert_allclose(a.per_sample[:20], b.per_sample[:20], rtol=1e-9)
    assert not np.allclose(a.per_sample[20:], b.per_sample[20:])
    # a refit on the test images would move the variances: the check above can tell leakage from none
    refit = dpddpm.fit_analytic_variances(model, test_a, dpddpm.cost_matrix(model, test_a, progress=False))
    assert refit.fingerprint() != variances.fingerprint()


def test_save_load_and_fingerprints(tmp_path):
    model, data = tiny_model(T=6), discrete_data(16)
    variances = dpddpm.fit_analytic_variances(model, data, dpddpm.cost_matrix(model, data, progress=False))
    back = AnalyticVariances.load(variances.save(tmp_path / "v.json"))
    np.testing.assert_array_equal(back.mse, variances.mse)
    assert back.decoder_log_variance == variances.decoder_log_variance and back.info == variances.info
    assert back.fingerprint() == variances.fingerprint()
    from dpddpm.fingerprint import model_fingerprint

    analytic = dpddpm.with_analytic_variances(model, variances)
    other = AnalyticVariances(variances.mse * 1.01, variances.decoder_log_variance)
    assert model_fingerprint(analytic) != model_fingerprint(model)
    assert model_fingerprint(analytic) != model_fingerprint(dpddpm.with_analytic_variances(model, other))


def test_analytic_is_refused_where_it_cannot_be(tmp_path):
    model, data = tiny_model(T=6), discrete_data(16)
    costs = dpddpm.cost_matrix(model, data, progress=False)
    variances = dpddpm.fit_analytic_variances(model, data, costs)
    with pytest.raises(ValueError, match="with_analytic_variances"):
        dpddpm.DDPM(model.net, model.schedule, "analytic", data_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="DDPMScheduler cannot hold analytic"):
        dpddpm.diffusers_scheduler_config(dpddpm.with_analytic_variances(model, variances))
    with pytest.raises(ValueError, match="T = 6"):
        dpddpm.with_analytic_variances(tiny_model(T=8), variances)
    with pytest.raises(ValueError, match="not the images"):
        dpddpm.fit_analytic_variances(model, discrete_data(16, seed=3), costs)
    with pytest.raises(ValueError, match="another model"):
        dpddpm.fit_analytic_variances(tiny_model(T=6, variance="fixed_small"), data, costs)
    bare = dpddpm.CostMatrix(costs.kl, costs.decoder, costs.prior, counts=costs.counts, info=costs.info)
    with pytest.raises(ValueError, match="mse"):
        dpddpm.analytic_costs(bare, variances, model, data)
    with pytest.raises(ValueError, match="partial"):
        dpddpm.fit_analytic_variances(model, data, dpddpm.cost_matrix(model, data, progress=False, rows=[6]))
    (tmp_path / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="analytic-variances file"):
        AnalyticVariances.load(tmp_path / "x.json")
    with pytest.raises(ValueError, match="finite"):
        AnalyticVariances(np.r_[np.nan, 1.0, np.nan], 0.0)


def test_sampling_uses_the_frozen_variances():
    """Ancestral sampling draws each jump with sigma*^2: with m_t = 0 it equals sampling with beta~."""
    model = tiny_model(T=12, variance="fixed_small")
    zero = AnalyticVariances(np.r_[np.nan, np.zeros(12)], math.log(1e-4))
    schedule = [12, 7, 3, 1]
    a = dpddpm.sample(dpddpm.with_analytic_variances(model, zero), schedule, 6, torch.Generator().manual_seed(0))
    b = dpddpm.sample(model, schedule, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    big = AnalyticVariances(np.r_[np.nan, np.full(12, 0.5)], math.log(1e-4))
    c = dpddpm.sample(dpddpm.with_analytic_variances(model, big), schedule, 6, torch.Generator().manual_seed(0))
    assert not torch.allclose(a, c)


def test_tiny_analytic_edges_keep_their_digits():
    """Near t = T an edge costs ~1e-8 bits/dim; the frozen-variance formula must not lose digits there
    (1 + tiny - 1 did: 1e-9 relative, found against a full network run)."""
    import mpmath

    sched = dpddpm.NoiseSchedule.cosine(4000)
    mpmath.mp.dps = 40
    for t, s, m_fit, m in ((4000, 3999, 0.4, 0.4), (4000, 3990, 0.4, 0.5), (3000, 2999, 0.3, 0.2)):
        j = sched.jump(t, s)
        d = mpmath.mpf(float(j.c1)) ** 2 / mpmath.mpf(float(j.beta_post))
        exact = (mpmath.log1p(d * m_fit) + (1 + d * m) / (1 + d * m_fit) - 1) / 2 / mpmath.log(2)
        assert analytic_edge_bpd(sched, t, s, m_fit, m) == pytest.approx(float(exact), rel=1e-12)
