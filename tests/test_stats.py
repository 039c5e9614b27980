"""Pooled statistics: the one Chan et al. formula, on numpy and torch, for rows and for merged files."""

import math

import numpy as np
import pytest
import torch

from dpddpm.stats import Pool, RowStats, pool, standard_error

RTOL = 1e-12  # pooling divides and multiplies by counts: round-off, not bits


def _summary(x):
    """(count, mean, M2) over axis 0, in x's own array type."""
    mean = x.mean(0)
    return x.shape[0], mean, ((x - mean) ** 2).sum(0)


@pytest.mark.parametrize("to_array", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
def test_pool_of_two_parts_equals_the_whole(to_array):
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 7))
    n, mean, m2 = pool(*_summary(to_array(x[:13])), *_summary(to_array(x[13:])))
    assert n == 50
    np.testing.assert_allclose(np.asarray(mean), x.mean(0), rtol=RTOL)
    np.testing.assert_allclose(np.asarray(m2), ((x - x.mean(0)) ** 2).sum(0), rtol=RTOL)


def test_pool_with_an_empty_side_keeps_the_other_and_never_divides_by_zero():
    n = np.array([0.0, 4.0, 0.0])
    mean, m2 = np.array([0.0, 1.5, 0.0]), np.array([0.0, 2.0, 0.0])
    out = pool(np.zeros(3), np.zeros(3), np.zeros(3), n, mean, m2)
    for got, want in zip(out, (n, mean, m2)):
        np.testing.assert_array_equal(got, want)
    assert pool(0, 0.0, 0.0, 0, 0.0, 0.0) == (0, 0.0, 0.0)


def test_standard_error_needs_two_samples():
    se = standard_error(np.array([0, 1, 2, 5]), np.array([0.0, 0.0, 2.0, 20.0]))
    assert np.isnan(se[:2]).all()
    np.testing.assert_allclose(se[2:], [1.0, 1.0], rtol=RTOL)


def test_row_stats_over_uneven_batches_equal_one_pass():
    x = torch.randn(37, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stats = RowStats(5, torch.device("cpu"))
    for a, b in ((0, 1), (1, 11), (11, 37)):
        stats.add_samples(x[a:b])
    mean, se = stats.result()
    np.testing.assert_allclose(mean, x.mean(0).numpy(), rtol=RTOL)
    np.testing.assert_allclose(se, (x.std(0) / math.sqrt(37)).numpy(), rtol=1e-10)


def test_row_stats_affine_values_equal_the_formed_values():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(20, 3, generator=g, dtype=torch.float64)
    coef = torch.randn(6, 3, generator=g, dtype=torch.float64)  # (values, features)
    const = torch.randn(6, generator=g, dtype=torch.float64)
    affine, formed = RowStats(6, torch.device("cpu")), RowStats(6, torch.device("cpu"))
    for sl in (slice(0, 8), slice(8, 20)):
        affine.add_affine(features[sl], coef, const)
        formed.add_samples(const + features[sl] @ coef.T)
    for a, b in zip(affine.result(), formed.result()):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_row_stats_of_one_sample_have_no_error():
    stats = RowStats(2, torch.device("cpu"))
    stats.add_samples(torch.ones(1, 2, dtype=torch.float64))
    mean, se = stats.result()
    np.testing.assert_array_equal(mean, [1.0, 1.0])
    assert np.isnan(se).all()


def test_pool_of_estimates_equals_the_estimate_of_all_samples():
    x = np.random.default_rng(3).exponential(size=(60, 4))
    parts = (x[:9], x[9:40], x[40:])
    pooled = Pool()
    for part in parts:
        n = np.full(4, len(part))
        pooled.add(part.mean(0), part.std(0, ddof=1) / np.sqrt(len(part)), n)
    mean, se = pooled.result()
    np.testing.assert_allclose(mean, x.mean(0), rtol=RTOL)
    np.testing.assert_allclose(se, x.std(0, ddof=1) / np.sqrt(60), rtol=1e-10)


def test_pool_ignores_entries_without_samples():
    pooled = Pool()
    pooled.add(np.array([np.nan, 2.0, 5.0]), np.array([np.nan, 0.5, np.nan]), np.array([0, 4, 1]))
    pooled.add(np.array([np.nan, 4.0, 7.0]), None, np.array([0, 4, 0]))  # 7.0 rests on no sample
    mean, se = pooled.result()
    assert np.isnan(mean[0]) and np.isnan(se[0])  # no samples at all
    assert mean[1] == pytest.approx(3.0) and np.isfinite(se[1])
    assert mean[2] == 5.0 and np.isnan(se[2])  # one sample: a mean, no error
