"""The variance rule has one home (dpddpm.variances) and the network pass one (dpddpm.netpass): their vectorised
forms agree with the one-jump forms and with the formulas written out, for every kind."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from toy_models import tiny_model

import dpddpm
from dpddpm.gaussian import predict_x0, q_sample
from dpddpm.netpass import network_pass
from dpddpm.variances import (
    VARIANCE_KINDS,
    AnalyticVariances,
    FitInfo,
    check_variance_rule,
    jump_log_variance,
    row_log_ratio,
)

SCHED = dpddpm.NoiseSchedule.cosine(50)
ANALYTIC = AnalyticVariances(np.linspace(0.0, 0.3, 51), -7.5, {"weights_fingerprint": "x", "T": 50})


def _one_jump(kind: str, t: int, s: int, v: torch.Tensor | None, t_above: int) -> torch.Tensor:
    value = jump_log_variance(
        SCHED, t, s, v, kind, t_above if s == 0 else None, ANALYTIC if kind == "analytic" else None
    )
    return torch.as_tensor(value, dtype=torch.float64).expand(v.shape if v is not None else ())


@pytest.mark.parametrize("kind", VARIANCE_KINDS)
def test_many_jumps_at_once_equal_each_jump_alone(kind: str):
    """Per-sample steps with decoder lanes mixed in (as training uses them) give each jump's own variance."""
    t = torch.tensor([1, 2, 7, 50, 1, 30])
    s = torch.tensor([0, 1, 3, 49, 0, 1])
    v = torch.linspace(-1.2, 1.3, 6 * 4).reshape(6, 4) if kind == "learned_range" else None
    analytic = ANALYTIC if kind == "analytic" else None
    many = jump_log_variance(SCHED, t[:, None], s[:, None], v, kind, 5, analytic)
    for i in range(6):
        one = _one_jump(kind, int(t[i]), int(s[i]), None if v is None else v[i], 5)
        torch.testing.assert_close(many[i].reshape(-1), one.reshape(-1), rtol=1e-14, atol=0)


def test_the_rule_written_out():
    """fixed_large on the decoder takes beta~ (improved-diffusion's index 0); analytic is beta~ + c1^2 m_t."""
    j = SCHED.jump(20, 11)
    assert jump_log_variance(SCHED, 20, 11, None, "fixed_small") == math.log(j.beta_post)
    assert jump_log_variance(SCHED, 20, 11, None, "fixed_large") == math.log(j.beta)
    assert jump_log_variance(SCHED, 1, 0, None, "fixed_large", 4) == math.log(SCHED.jump(4, 1).beta_post)
    expected = math.log(j.beta_post + j.c1**2 * ANALYTIC.mse[20])
    assert jump_log_variance(SCHED, 20, 11, None, "analytic", analytic=ANALYTIC) == pytest.approx(expected, rel=1e-15)
    assert jump_log_variance(SCHED, 1, 0, None, "analytic", analytic=ANALYTIC) == -7.5


@pytest.mark.parametrize("kind", ["fixed_small", "fixed_large", "analytic"])
def test_row_log_ratio_is_the_jumps_variance_over_the_posterior(kind: str):
    analytic = ANALYTIC if kind == "analytic" else None
    s = np.arange(1, 30)
    direct = [jump_log_variance(SCHED, 30, int(k), None, kind, analytic=analytic) for k in s]
    np.testing.assert_allclose(
        row_log_ratio(SCHED, 30, kind, analytic), direct - np.log(SCHED.jump(30, s).beta_post), rtol=1e-9, atol=1e-14
    )


def test_rule_errors():
    with pytest.raises(ValueError, match="variance must be one of"):
        check_variance_rule("fixed", None)
    with pytest.raises(ValueError, match="needs its fitted variances"):
        check_variance_rule("analytic", None)
    with pytest.raises(ValueError, match="needs the fitted"):
        jump_log_variance(SCHED, 3, 1, None, "analytic")
    with pytest.raises(ValueError, match="learned_range needs"):
        jump_log_variance(SCHED, np.array([3]), np.array([1]), None, "learned_range")


def test_fit_info_is_typed_and_read_from_a_dict():
    info = FitInfo.from_dict({"T": 50, "N": 3, "weights_fingerprint": "abc", "other": 1})
    assert info.N == 3 and info.seed is None and info.as_dict()["weights_fingerprint"] == "abc"
    with pytest.raises(ValueError, match="'N' must be int"):
        FitInfo.from_dict({"N": "3"})
    assert ANALYTIC.info == FitInfo(T=50, weights_fingerprint="x")


@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
def test_network_pass_is_the_formula_written_out(variance: str):
    model = tiny_model(T=9, variance=variance)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, (5, *model.data_shape), generator=g) / 127.5 - 1).double().reshape(5, -1)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 3, 9, 3, 2])
    out = network_pass(model, t, x0, noise)
    for i in range(5):
        x_t = q_sample(model.schedule, int(t[i]), x0[i : i + 1], noise[i : i + 1]).float()  # the rounded input
        eps, v = model.predict(x_t.reshape(1, *model.data_shape), int(t[i]))
        x0_hat = predict_x0(model.schedule, int(t[i]), x_t.double(), eps.reshape(1, -1), model.clip_denoised)
        torch.testing.assert_close(out.x0_hat[i : i + 1], x0_hat, rtol=1e-6, atol=1e-7)
        if variance == "learned_range":
            torch.testing.assert_close(out.v[i : i + 1], v.reshape(1, -1), rtol=1e-5, atol=1e-6)
        else:
            assert out.v is None
