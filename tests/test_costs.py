"""The cost matrix: against closed forms, against the direct per-edge terms, and its file format."""

import math

import numpy as np
import pytest
import torch

import dpddpm
from dpddpm.costs import row_generator
from dpddpm.rowcosts import KLRow
from toy_models import LN2, assert_costs_close, discrete_data, gaussian_data, gaussian_model, gaussian_posterior_var, tiny_model


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


def _direct_row_terms(model, data, seed, t):
    """Per-sample edge costs of row t computed one edge at a time with edge_bpd (no shortcuts)."""
    sched = model.schedule
    N = data.shape[0]
    x0 = data.double()
    noise = torch.randn(N, x0[0].numel(), generator=row_generator(seed, t, torch.device("cpu")),
                        dtype=torch.float64).reshape(x0.shape)
    a = float(sched.alpha_bar[t])
    x_t = (math.sqrt(a) * x0 + math.sqrt(1 - a) * noise).float()
    eps, v = model.predict(x_t, t)
    kw = dict(variance=model.variance, num_bins=model.num_bins, clip_denoised=model.clip_denoised)
    if t == 1:
        return torch.stack([dpddpm.edge_bpd(sched, 1, 0, x0, x_t.double(), eps, v, t_above=u, **kw)
                            for u in range(2, sched.T + 1)], dim=1)
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
    np.testing.assert_allclose(costs.prior[1:], dpddpm.prior_bpd(model.schedule, np.arange(1, 13), data)
                               .mean(0).numpy(), rtol=1e-12)
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
    cols = slice(None) if t < 200 else np.r_[0:20, t - 21:t - 1]  # the direct sum is big: check the ends
    per_dim = 0.5 * (f * delta[..., cols] + torch.expm1(-f * delta[..., cols])
                     + r[..., cols] * err2[:, :, None] * torch.exp(-f * delta[..., cols]))
    direct = per_dim.mean(1) / LN2  # (B, S)
    np.testing.assert_allclose(mean[cols], direct.mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(se[cols], (direct.std(0) / math.sqrt(B)).numpy(), rtol=1e-4)


def test_batch_size_and_row_sharding_do_not_change_the_result(tmp_path):
    model = tiny_model(T=10)
    data = discrete_data(23)
    full = dpddpm.cost_matrix(model, data, batch_size=64, progress=False, seed=2)
    small = dpddpm.cost_matrix(model, data, batch_size=7, progress=False, seed=2)
    # Batches split rows differently: the float32 network's outputs move by ~1e-7 with the batch shape, and
    # each batch fits its own Chebyshev interval, so agreement is to round-off, not bit for bit.
    assert_costs_close(small, full)
    parts = [dpddpm.cost_matrix(model, data, batch_size=16, progress=False, seed=2, rows=r)
             for r in (range(1, 4), range(4, 11))]
    assert not parts[0].is_complete
    merged = dpddpm.CostMatrix.merge(parts)
    assert merged.is_complete
    np.testing.assert_allclose(merged.kl, full.kl, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(merged.stderr, full.stderr, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(merged.decoder, full.decoder, rtol=1e-6, equal_nan=True)


def test_data_sharding_merges_means_and_standard_errors():
    rng = np.random.default_rng(0)
    T = 5
    samples = rng.normal(size=(40, T + 1, T + 1))
    tri = np.tril(np.ones((T + 1, T + 1), bool), -1)
    tri[:, 0] = False

    def summarize(x, data_id):
        kl = np.where(tri, x.mean(0), np.nan)
        se = np.where(tri, x.std(0, ddof=1) / np.sqrt(len(x)), np.nan)
        counts = np.r_[0, np.full(T, len(x))]
        return dpddpm.CostMatrix(kl=kl, decoder=np.r_[np.nan, np.nan, np.ones(T - 1)], prior=np.r_[np.nan,
                                 np.ones(T)], stderr=se, decoder_stderr=np.r_[np.nan, np.nan, np.zeros(T - 1)],
                                 counts=counts, meta={"data_fingerprint": data_id, "N": len(x)})

    merged = dpddpm.CostMatrix.merge([summarize(samples[:13], "a"), summarize(samples[13:], "b")])
    whole = summarize(samples, "ab")
    np.testing.assert_allclose(merged.kl, whole.kl, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(merged.stderr, whole.stderr, rtol=1e-10, equal_nan=True)
    assert merged.meta["N"] == 40 and merged.meta["data_fingerprint"] is None


def test_save_and_load_roundtrip(tmp_path):
    model = tiny_model(T=8)
    costs = dpddpm.cost_matrix(model, discrete_data(9), progress=False)
    path = costs.save(tmp_path / "costs.npz")
    back = dpddpm.CostMatrix.load(path, expect={"T": 8, "variance": "learned_range"})
    for name in ("kl", "decoder", "prior", "stderr", "decoder_stderr", "prior_stderr", "counts"):
        np.testing.assert_array_equal(getattr(back, name), getattr(costs, name))
    assert back.meta["N"] == 9
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="variance"):
        dpddpm.CostMatrix.load(path, expect={"variance": "fixed_small"})
    with pytest.raises(ValueError, match="T"):
        dpddpm.CostMatrix.load(path, expect={"T": 9})


def test_elbo_agrees_with_the_cost_matrix():
    """A fresh estimate of a schedule's ELBO agrees with the matrix's in-sample value on the same images, within
    the paired standard error of their per-image difference (the images are shared, the noise is not)."""
    model = tiny_model(T=12, variance="learned_range")
    data = discrete_data(400, seed=1)
    costs = dpddpm.cost_matrix(model, data, batch_size=2048, progress=False, seed=0)
    for sched in ([12, 7, 3, 1], [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1], [9, 1]):
        est = dpddpm.elbo(model, data, sched, seed=11)
        mat = dpddpm.in_sample_elbo(model, data, costs, sched)
        assert abs(est.bpd - mat.bpd) < 3.5 * est.paired_stderr(mat), (sched, est, mat)
        assert est.terms.shape == (len(sched) + 1,)
        np.testing.assert_allclose(est.terms.sum(), est.bpd, rtol=1e-12)


def test_data_shards_pool_the_prior_and_the_counts():
    """Shards of data: the prior (exact given the data) pools to the full data's prior, counts add up."""
    model = tiny_model(T=6)
    data = discrete_data(30, seed=4)
    halves = [dpddpm.cost_matrix(model, d, progress=False, seed=s) for d, s in ((data[:12], 0), (data[12:], 1))]
    merged = dpddpm.CostMatrix.merge(halves)
    full = dpddpm.cost_matrix(model, data, progress=False)
    np.testing.assert_allclose(merged.prior, full.prior, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(merged.prior_stderr, full.prior_stderr, rtol=1e-9, equal_nan=True)
    assert merged.counts[1:].tolist() == [30] * 6 and merged.meta["N"] == 30
