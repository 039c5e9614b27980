"""A cost-matrix run accumulates the rows of a network batch together (KLRowBlock) and screens the decoder row:
against one row at a time (KLRow), against every dimension and every u evaluated directly, and for any split of
rows into batches."""

import math

import numpy as np
import pytest
import torch
from toy_models import LN2

import dpddpm
from dpddpm.gaussian import TANH_ONE, certain_bins, discretized_gaussian_nll
from dpddpm.rowblock import KLRowBlock
from dpddpm.rowcosts import DecoderRow, KLRow
from dpddpm.validation import check_finite
from dpddpm.variances import jump_log_variance

CPU = torch.device("cpu")
SCHED = dpddpm.NoiseSchedule.cosine(200)
N, D = 23, 48


def _outputs(t: int, learned: bool):
    """err2 (N, D) and v (N, D) or None for row t: errors that grow with t, v spread over [-1.2, 1.2]."""
    g = torch.Generator().manual_seed(t)
    err2 = (torch.randn(N, D, generator=g, dtype=torch.float64) * 0.01 * (1 + t / 50)) ** 2
    v = (torch.rand(N, D, generator=g) * 2.4 - 1.2).float() if learned else None
    return err2, v


def _analytic_model():
    mse = np.linspace(0.3, 1e-4, SCHED.T + 1)[::-1].copy()
    return dpddpm.AnalyticVariances(mse=mse, decoder_log_variance=-6.0)


GROUPINGS = {"cpu": (None, None), "mixed": (3, 100), "gpu": (1 << 30, 1 << 30)}  # (pieces_per_group, chunk_values)


@pytest.mark.parametrize(
    "variance, grouping",
    [("fixed_small", "cpu"), ("fixed_large", "cpu"), ("analytic", "cpu")]  # grouping concerns learned rows only
    + [("learned_range", grouping) for grouping in GROUPINGS],
)
@pytest.mark.parametrize("batch_size", [7, 23, 50, 1000])
def test_block_equals_one_row_at_a_time(variance, batch_size, grouping):
    """Rows 200 .. 2 packed into batches of any size (rows split across batches, batches holding many rows) give
    each row's mean, standard error and m_t of KLRow fed the whole row at once; with a CPU's grouping (a piece at
    a time, moments in chunks), a GPU's (all pieces of a batch in one set of products) or anything between."""
    analytic = _analytic_model() if variance == "analytic" else None
    learned = variance == "learned_range"
    rows = list(range(SCHED.T, 1, -1))
    outputs = {t: _outputs(t, learned) for t in rows}
    per_group, chunk = GROUPINGS[grouping]
    block = KLRowBlock(SCHED, variance, D, CPU, analytic=analytic, pieces_per_group=per_group, chunk_values=chunk)
    finished = {}
    flat = [(t, i) for t in rows for i in range(N)]
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        pieces = []  # [t, start, stop], cut as costs._pieces cuts
        for t, i in chunk:
            if pieces and pieces[-1][0] == t:
                pieces[-1][2] = i + 1
            else:
                pieces.append([t, i, i + 1])
        err2 = torch.cat([outputs[t][0][a:b] for t, a, b in pieces])
        v = torch.cat([outputs[t][1][a:b] for t, a, b in pieces]) if learned else None
        block.add([(t, b - a) for t, a, b in pieces], err2, v)
        for t, _, b in pieces:
            if b == N:
                finished[t] = block.pop(t)
    assert sorted(finished) == sorted(rows)
    for t in rows:
        one = KLRow(SCHED, t, variance, D, CPU, analytic=analytic)
        one.add(*outputs[t])
        mean, se = one.stats.result()
        mse, mse_se = one.mse_stats.result()
        got = finished[t]
        assert got.count == N
        np.testing.assert_allclose(got.mean, mean, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(got.stderr, se, rtol=1e-7, atol=1e-15)
        assert got.mse == pytest.approx(float(mse[0]), rel=1e-12)
        assert got.mse_stderr == pytest.approx(float(mse_se[0]), rel=1e-9)


def test_block_learned_row_against_the_direct_sum():
    """A learned row from the block, its pieces in different batches, against the per-dimension sum of the KL."""
    t, variance = 150, "learned_range"
    err2, v = _outputs(t, True)
    block = KLRowBlock(SCHED, variance, D, CPU)
    other = _outputs(90, True)  # another row shares the first batch, and its span of f
    block.add([(90, N), (t, 10)], torch.cat([other[0], err2[:10]]), torch.cat([other[1], v[:10]]))
    block.add([(t, N - 10)], err2[10:], v[10:])
    got = block.pop(t)
    s = np.arange(1, t)
    j = SCHED.jump(t, s)
    delta = torch.as_tensor(np.log(j.beta / j.beta_post))[None, None, :]
    r = torch.as_tensor(j.c1**2 / j.beta_post)[None, None, :]
    f = ((v.double() + 1) / 2)[:, :, None]
    per_dim = 0.5 * (f * delta + torch.expm1(-f * delta) + r * err2[:, :, None] * torch.exp(-f * delta))
    direct = per_dim.mean(1) / LN2  # (N, t-1)
    np.testing.assert_allclose(got.mean, direct.mean(0).numpy(), rtol=1e-9)
    np.testing.assert_allclose(got.stderr, (direct.std(0) / math.sqrt(N)).numpy(), rtol=1e-6)


def _decoder_inputs(num_bins: int):
    """x0 on the levels; x^0 within 1e-6 of it for most dimensions, near a bin's edge for some, far for a few."""
    g = torch.Generator().manual_seed(3)
    levels = torch.randint(0, num_bins, (N, D), generator=g)
    x0 = levels.double() * (2.0 / (num_bins - 1)) - 1.0
    offset = torch.randn(N, D, generator=g, dtype=torch.float64) * 1e-6
    half = 1.0 / (num_bins - 1)
    inward = torch.where(x0[:, :5] > 0, -1.0, 1.0)  # towards the middle, so that the clamp keeps it
    offset[:, :5] = inward * half * (1 + 0.01 * torch.randn(N, 5, generator=g, dtype=torch.float64))  # at an edge
    offset[:3, 5] = 0.4  # far off
    return x0, (x0 + offset).clamp(-1, 1)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_decoder_row_screen_equals_every_dimension_at_every_u(variance):
    """The screened decoder row against discretized_gaussian_nll over all dimensions and all u = 2 .. T, on the
    T = 4000 cosine schedule (whose decoder sigma is far below the bin width)."""
    num_bins, sched = 17, dpddpm.NoiseSchedule.cosine(4000)
    x0, x0_hat = _decoder_inputs(num_bins)
    v = (torch.rand(N, D, generator=torch.Generator().manual_seed(4)) * 2.4 - 1.2).float()
    v = v if variance == "learned_range" else None
    row = DecoderRow(sched, variance, num_bins, CPU)
    row.add(x0[:9], x0_hat[:9], None if v is None else v[:9])  # two batches
    row.add(x0[9:], x0_hat[9:], None if v is None else v[9:])
    mean, se = row.stats.result()
    u = np.arange(2, sched.T + 1)[None, None, :]
    log_var = jump_log_variance(sched, 1, 0, None if v is None else v[:, :, None], variance, u)
    direct = discretized_gaussian_nll(x0[:, :, None], x0_hat[:, :, None], log_var, num_bins).mean(1) / LN2
    np.testing.assert_allclose(mean, direct.mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(se, (direct.std(0) / math.sqrt(N)).numpy(), rtol=1e-9)
    # the screen did its work: most dimensions are certain, the ones at an edge are not
    largest = row._largest_log_variance(None if v is None else v.reshape(N, D, 1))
    certain = certain_bins(x0[..., None], x0_hat[..., None], largest, num_bins)[..., 0]
    assert certain[:, 6:].float().mean() > 0.9 and not certain[:, :5].any()


def test_certain_bins_are_exactly_zero_at_every_smaller_variance():
    """Where certain_bins holds, the NLL is exactly 0 at that variance and below; tanh(x) is 1.0 from 19.1 on."""
    x = torch.cat([torch.linspace(19.1, 100, 5000, dtype=torch.float64), torch.logspace(2, 300, 500)])
    assert bool((torch.tanh(x) == 1.0).all()) and bool((torch.tanh(-x) == -1.0).all())
    assert TANH_ONE > 19.1
    num_bins = 256
    x0, x0_hat = _decoder_inputs(num_bins)
    for log_var in (-20.0, -16.0):  # sigma 4.5e-5 and 3.4e-4 against a half-width of 3.9e-3
        certain = certain_bins(x0, x0_hat, log_var, num_bins)
        assert certain.any() and not certain.all()
        for smaller in (log_var, log_var - 0.5, log_var - 5.0):
            nll = discretized_gaussian_nll(x0, x0_hat, smaller, num_bins)
            assert bool((nll[certain] == 0).all())


def test_check_finite_fast_path():
    """NaN or Inf anywhere is refused, whatever mix; huge finite values whose sum overflows are accepted."""
    for bad in ([1.0, float("nan")], [float("inf"), 2.0], [float("-inf"), 1.0], [float("inf"), float("-inf")]):
        with pytest.raises(FloatingPointError, match="NaN/Inf"):
            check_finite(torch.tensor(bad), "the output")
    check_finite(torch.full((8,), 3e38, dtype=torch.float32), "the output")  # the sum overflows, the values do not
    check_finite(torch.arange(5), "integers")


def test_segment_affine_stats_against_the_values_formed():
    """Segments of unequal length (padded inside) give the mean and M2 of the values features @ coef.T formed, and
    with a change of basis folded in, of features @ (coef @ change).T."""
    from dpddpm.stats import segment_affine_stats

    g = torch.Generator().manual_seed(1)
    features = torch.randn(40, 6, generator=g, dtype=torch.float64) + 3.0
    bounds = [0, 1, 13, 30, 40]  # one segment of a single sample
    coef = torch.randn(4, 9, 6, generator=g, dtype=torch.float64)  # 9 values per segment
    change = torch.randn(6, 6, generator=g, dtype=torch.float64)
    mean, m2 = segment_affine_stats(features, bounds, coef)
    mean_changed, m2_changed = segment_affine_stats(features, bounds, coef, change)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        values = features[a:b] @ coef[k].T
        torch.testing.assert_close(mean[k], values.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m2[k], ((values - values.mean(0)) ** 2).sum(0), rtol=1e-9, atol=1e-9)
        values = features[a:b] @ (coef[k] @ change).T  # coefficients in another basis
        torch.testing.assert_close(mean_changed[k], values.mean(0), rtol=1e-12, atol=1e-11)
        torch.testing.assert_close(m2_changed[k], ((values - values.mean(0)) ** 2).sum(0), rtol=1e-9, atol=1e-8)
