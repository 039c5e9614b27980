"""The Gaussian formulas of dpddpm.gaussian, each against a direct formula or torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import dpddpm
from dpddpm.gaussian import (
    discretized_gaussian_nll,
    normal_kl,
    predict_eps,
    predict_x0,
    q_sample,
    range_fraction,
    standard_normal,
    standard_normal_rows,
)
from dpddpm.variances import VARIANCE_KINDS, VarianceKind, jump_log_variance, log_variance_range, model_log_variance

SCHED = dpddpm.NoiseSchedule.cosine(100)
T_BATCH = torch.tensor([1, 2, 50, 99, 100, 1])


def _draws(seed: int = 0, shape: tuple[int, ...] = (6, 3, 2, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    return x0, torch.randn(shape, generator=g, dtype=torch.float64)


def test_q_sample_is_the_forward_formula_for_int_and_batched_t():
    x0, noise = _draws()
    batched = q_sample(SCHED, T_BATCH, x0, noise)
    assert batched.dtype == torch.float64 and batched.shape == x0.shape
    for i, t in enumerate(T_BATCH.tolist()):
        a = float(SCHED.alpha_bar[t])
        one = q_sample(SCHED, t, x0[i : i + 1], noise[i : i + 1])
        assert torch.equal(one, math.sqrt(a) * x0[i : i + 1] + math.sqrt(1 - a) * noise[i : i + 1])
        assert torch.equal(batched[i : i + 1], one)  # a batch of t gives the very same numbers


def test_q_sample_takes_float32_inputs_in_float64():
    x0, noise = _draws()
    assert torch.equal(
        q_sample(SCHED, 7, x0.float(), noise.float()), q_sample(SCHED, 7, x0.float().double(), noise.float().double())
    )


@pytest.mark.parametrize("clip", [False, True])
def test_predict_x0_batched_equals_int_t_and_inverts_q_sample(clip):
    x0, eps = _draws(1)
    x_t = q_sample(SCHED, T_BATCH, x0, eps)
    batched = predict_x0(SCHED, T_BATCH, x_t.float(), eps.float(), clip)
    for i, t in enumerate(T_BATCH.tolist()):
        assert torch.equal(
            batched[i : i + 1], predict_x0(SCHED, t, x_t[i : i + 1].float(), eps[i : i + 1].float(), clip)
        )
    assert torch.allclose(predict_x0(SCHED, T_BATCH, x_t, eps, clip), x0, atol=1e-9)  # x0 lies in [-1, 1]


def test_predict_x0_clips_only_when_asked():
    x_t = torch.full((1, 4), 3.0, dtype=torch.float64)
    eps = torch.zeros_like(x_t)
    assert float(predict_x0(SCHED, 50, x_t, eps, clip=True).max()) == 1.0
    assert float(predict_x0(SCHED, 50, x_t, eps, clip=False).max()) > 3.0


def test_predict_eps_inverts_q_sample():
    x0, eps = _draws(2)
    x_t = q_sample(SCHED, T_BATCH, x0, eps)
    assert torch.allclose(predict_eps(SCHED, T_BATCH, x_t, x0), eps, rtol=1e-9, atol=1e-9)
    assert torch.equal(predict_eps(SCHED, 50, x_t[2:3], x0[2:3]), predict_eps(SCHED, T_BATCH, x_t, x0)[2:3])


def test_normal_kl_matches_the_direct_formula_and_torch_distributions():
    g = torch.Generator().manual_seed(3)
    m_q, m_p = torch.randn(2, 50, generator=g, dtype=torch.float64)
    lv_q, lv_p = torch.randn(2, 50, generator=g, dtype=torch.float64)
    ours = normal_kl(m_q - m_p, lv_q, lv_p)
    var_q, var_p = lv_q.exp(), lv_p.exp()
    direct = 0.5 * torch.log(var_p / var_q) + (var_q + (m_q - m_p) ** 2) / (2 * var_p) - 0.5
    assert torch.allclose(ours, direct, rtol=1e-12, atol=1e-14)
    reference = kl_divergence(Normal(m_q, var_q.sqrt()), Normal(m_p, var_p.sqrt()))
    assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-12)


def test_normal_kl_is_zero_for_equal_gaussians_and_broadcasts_a_float_log_variance():
    lv = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    assert torch.equal(normal_kl(torch.zeros(3, dtype=torch.float64), lv, lv), torch.zeros(3, dtype=torch.float64))
    diff = torch.tensor([[0.1], [0.2]], dtype=torch.float64)
    assert torch.allclose(normal_kl(diff, -1.0, lv), normal_kl(diff, torch.full((3,), -1.0, dtype=torch.float64), lv))
    assert normal_kl(diff, -1.0, lv).shape == (2, 3)


def test_range_fraction_maps_v_to_f_in_float64():
    v = torch.tensor([-1.0, 0.0, 1.0, 1.5])
    assert torch.equal(range_fraction(v), torch.tensor([0.0, 0.5, 1.0, 1.25], dtype=torch.float64))


def test_learned_range_interpolates_between_the_ends():
    lo, hi = math.log(0.01), math.log(0.02)
    f = torch.tensor([0.0, 1.0, 0.5, -0.1, 1.1], dtype=torch.float64)
    got = model_log_variance("learned_range", lo, hi, f)
    assert got[0] == lo and got[1] == hi
    assert math.isclose(float(got[2]), (lo + hi) / 2, rel_tol=1e-15)
    assert float(got[3]) < lo and float(got[4]) > hi  # f is never clamped: outside [0, 1] it extrapolates
    with pytest.raises(ValueError, match="variance output v"):
        model_log_variance("learned_range", lo, hi, None)


def test_fixed_variances_and_the_decoder_rule():
    lo, hi = -5.0, -2.0
    assert model_log_variance("fixed_small", lo, hi) == lo
    assert model_log_variance("fixed_large", lo, hi) == hi
    assert model_log_variance("fixed_large", lo, hi, decoder=True) == lo  # improved-diffusion: beta~ on the decoder
    assert model_log_variance("fixed_small", lo, hi, decoder=True) == lo
    # a batch mixing decoder and other steps (training): the rule per sample
    lo_t, hi_t = torch.tensor([[lo], [lo]]), torch.tensor([[hi], [hi]])
    mixed = model_log_variance("fixed_large", lo_t, hi_t, decoder=torch.tensor([[True], [False]]))
    assert mixed.flatten().tolist() == [lo, hi]
    with pytest.raises(ValueError, match="fixed_small"):
        model_log_variance("fixed", lo, hi)  # type: ignore[arg-type]


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])  # analytic: test_analytic
def test_jump_log_variance_reads_the_range_of_the_jump(variance: VarianceKind):
    v = torch.linspace(-1.2, 1.2, 7)
    for t, s, t_above in ((50, 20, None), (2, 1, None), (1, 0, None), (1, 0, 30)):
        lo, hi = log_variance_range(SCHED, t, s, t_above)
        if s == 0:
            u = t_above or 2
            assert lo == math.log(float(SCHED.jump(u, 1).beta_post)) and hi == math.log(1 - SCHED.alpha_bar[1])
        else:
            assert lo == math.log(float(SCHED.jump(t, s).beta_post)) and hi == math.log(float(SCHED.jump(t, s).beta))
        got = jump_log_variance(SCHED, t, s, v, variance, t_above)
        f = (v.double() + 1) / 2
        want = {"fixed_small": lo, "fixed_large": lo if s == 0 else hi, "learned_range": f * hi + (1 - f) * lo}
        assert torch.equal(torch.as_tensor(got), torch.as_tensor(want[variance]))


def test_the_variance_kinds_are_the_models_choices():
    assert VARIANCE_KINDS == ("fixed_small", "fixed_large", "learned_range", "analytic")
    with pytest.raises(ValueError, match="learned_range"):
        dpddpm.DDPM(torch.nn.Identity(), SCHED, "learned", data_shape=(4,))  # type: ignore[arg-type]


@pytest.mark.parametrize("num_bins", [17, 256])
def test_discretized_gaussian_sums_to_one_over_the_levels(num_bins):
    levels = torch.linspace(-1, 1, num_bins, dtype=torch.float64)
    for mean, log_var in ((0.3, math.log(0.05)), (-0.99, math.log(1e-4)), (0.0, math.log(4.0))):
        p = torch.exp(-discretized_gaussian_nll(levels, torch.tensor(mean, dtype=torch.float64), log_var, num_bins))
        assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-9)


@pytest.mark.parametrize("shape", [(300, 64), (16,), (17,), (7,), (1, 33), (5, 100), (4099, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_standard_normal_is_torch_randns_float64_draw(shape, threads):
    """The cost matrix's noise: torch.randn's own values to a few ulp, and the generator left in the same state
    (whole blocks of 16, the redrawn last 16, sizes below 16), on one thread or two."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours, theirs = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
        z = standard_normal(shape, ours, torch.device("cpu"))
        reference = torch.randn(shape, generator=theirs, dtype=torch.float64)
    finally:
        torch.set_num_threads(before)
    assert z.shape == reference.shape and z.dtype == torch.float64
    torch.testing.assert_close(z, reference, rtol=8 * torch.finfo(torch.float64).eps, atol=1e-15)
    assert torch.equal(ours.get_state(), theirs.get_state())  # the same number of uniforms consumed


@pytest.mark.parametrize("shape", [(3, 16), (5, 7), (2, 9)])  # rows of whole blocks of 16, or not
def test_standard_normal_rows_are_each_generators_own_draw(shape):
    """Rows drawn together equal rows drawn one at a time (the cost matrix draws a batch's new rows together)."""
    together = standard_normal_rows(shape, [torch.Generator().manual_seed(s) for s in range(4)], torch.device("cpu"))
    assert together.shape == (4, *shape)
    for s in range(4):
        alone = standard_normal(shape, torch.Generator().manual_seed(s), torch.device("cpu"))
        torch.testing.assert_close(together[s], alone, rtol=4 * torch.finfo(torch.float64).eps, atol=1e-15)
    assert standard_normal_rows(shape, [], torch.device("cpu")).shape == (0, *shape)
