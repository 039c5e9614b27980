"""Noise schedules and jump coefficients: against their definitions, the golden data and Gaussian conditioning."""

import math

import numpy as np
import pytest
from toy_models import golden

import dpddpm


def test_alpha_bar_is_float64_decreasing_from_one():
    for sched in (dpddpm.NoiseSchedule.cosine(4000), dpddpm.NoiseSchedule.linear(1000)):
        a = sched.alpha_bar
        assert a.dtype == np.float64 and a.shape == (sched.T + 1,) and a[0] == 1.0
        assert np.all(np.diff(a) < 0) and a[-1] > 0
        np.testing.assert_allclose(np.cumprod(1 - sched.betas), a[1:], rtol=1e-12)


def test_cosine_schedule_matches_improved_diffusion():
    g = golden()
    ours = dpddpm.NoiseSchedule.cosine(len(g["alphas_cumprod"]))
    np.testing.assert_allclose(ours.alpha_bar[1:], g["alphas_cumprod"].numpy(), rtol=1e-12)
    assert ours.betas.max() <= 0.999  # clipped as that code clips


def test_linear_schedule_scales_to_T():
    sched = dpddpm.NoiseSchedule.linear(4000)
    # betas are recomputed from ratios of alpha_bar: a few ulps of alpha_bar are ~1e-12 of a small beta
    np.testing.assert_allclose(sched.betas[[0, -1]], [1e-4 / 4, 0.02 / 4], rtol=1e-9)
    custom = dpddpm.NoiseSchedule.linear(10, 0.1, 0.2)
    np.testing.assert_allclose(custom.betas, np.linspace(0.1, 0.2, 10), rtol=1e-9)


def test_jump_is_gaussian_conditioning_of_the_forward_process():
    """x_t | x_s ~ N(sqrt(a_t/a_s) x_s, beta_{t|s}) and x_s | x_0 ~ N(sqrt(a_s) x_0, 1 - a_s): conditioning x_s on
    (x_t, x_0) gives mean c1 x_0 + c2 x_t and variance beta~, computed here from the joint covariance."""
    sched = dpddpm.NoiseSchedule.cosine(50)
    for t, s in ((50, 1), (30, 29), (20, 5)):
        a_t, a_s = sched.alpha_bar[t], sched.alpha_bar[s]
        # joint of (x_s, x_t) given x_0 = 0: var x_s = 1 - a_s, cov = sqrt(a_t/a_s)(1 - a_s), var x_t = 1 - a_t
        cov = math.sqrt(a_t / a_s) * (1 - a_s)
        c2 = cov / (1 - a_t)
        var = (1 - a_s) - cov**2 / (1 - a_t)
        c1 = math.sqrt(a_s) - c2 * math.sqrt(a_t)  # the mean given x_0 must come out right
        j = sched.jump(t, s)
        np.testing.assert_allclose([j.c1, j.c2, j.beta_post], [c1, c2, var], rtol=1e-10)
        assert j.beta == pytest.approx(1 - a_t / a_s, rel=1e-14)


def test_jump_broadcasts_and_the_one_step_jump_is_the_ddpm_posterior():
    sched = dpddpm.NoiseSchedule.cosine(100)
    t = np.arange(2, 101)
    j = sched.jump(t, t - 1)
    np.testing.assert_allclose(j.beta, sched.betas[1:], rtol=1e-9)
    np.testing.assert_allclose(
        j.beta_post, sched.betas[1:] * (1 - sched.alpha_bar[1:-1]) / (1 - sched.alpha_bar[2:]), rtol=1e-9
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda: dpddpm.NoiseSchedule(np.array([0.9, 0.5])), "alpha_bar"),
        (lambda: dpddpm.NoiseSchedule(np.array([1.0, 0.5, 0.6])), "decreasing"),
        (lambda: dpddpm.NoiseSchedule.from_betas([0.1, 1.0]), "beta"),
        (lambda: dpddpm.NoiseSchedule.cosine(0), "positive integer"),
        (lambda: dpddpm.NoiseSchedule.linear(2.5), "positive integer"),
    ],
)
def test_bad_schedules_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()
