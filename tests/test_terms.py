"""ELBO terms against improved-diffusion's own outputs (tests/data/improved_diffusion_small_golden.pt)."""

import numpy as np
import pytest
import torch
from toy_models import golden

import dpddpm

G = golden()
SCHED = dpddpm.NoiseSchedule.cosine(4000)
TERMS = [("full_chain", i) for i in range(len(G["full_chain"]["terms"]))] + [
    ("respaced", i) for i in range(len(G["respaced"]["terms"]))
]


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """The fixture's stated tolerance: relative 1e-4, or absolute 1e-6 bits/dim."""
    ours, ref = ours.double(), ref.double()
    ok = (ours - ref).abs() <= torch.maximum(1e-4 * ref.abs(), torch.full_like(ref, 1e-6))
    assert ok.all(), (ours, ref)


def test_cosine_schedule_matches_reference():
    np.testing.assert_array_equal(SCHED.alpha_bar[1:], G["alphas_cumprod"].numpy())
    assert SCHED.alpha_bar[0] == 1.0 and SCHED.alpha_bar.dtype == np.float64


@pytest.mark.parametrize("part,i", TERMS)
def test_edge_terms(part, i):
    term = G[part]["terms"][i]
    out = term["model_out"]
    t_above = term["t_above"] if term["t_above"] > 0 else None
    bpd = dpddpm.edge_bpd(
        SCHED,
        term["t"],
        term["s"],
        G["x_start"],
        term["x_t"],
        out[:, :3],
        out[:, 3:],
        variance="learned_range",
        t_above=t_above,
        clip_denoised=term["clip_denoised"],
    )
    assert bpd.dtype == torch.float64 and bpd.shape == (2,)
    assert_close(bpd, term["bpd"])


def test_pred_xstart():
    from dpddpm.terms import predict_x0

    for term in G["respaced"]["terms"]:
        x0 = predict_x0(SCHED, term["t"], term["x_t"], term["model_out"][:, :3], term["clip_denoised"])
        assert torch.allclose(x0.float(), term["pred_xstart"], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("part", ["full_chain", "respaced"])
def test_prior(part):
    assert_close(dpddpm.prior_bpd(SCHED, 4000, G["x_start"]), G[part]["prior_bpd"])


@pytest.mark.parametrize("clip", [True, False])
def test_respaced_total_is_the_sum_of_its_terms(clip):
    r = G["respaced"]
    kept = sorted(r["kept"], reverse=True)
    total = dpddpm.prior_bpd(SCHED, kept[0], G["x_start"])
    by_t = {tm["t"]: tm for tm in r["terms"] if tm["clip_denoised"] == clip}
    for i, t in enumerate(kept):
        s = kept[i + 1] if t != 1 else 0
        tm = by_t[t]
        assert tm["s"] == s
        out = tm["model_out"]
        total = total + dpddpm.edge_bpd(
            SCHED,
            t,
            s,
            G["x_start"],
            tm["x_t"],
            out[:, :3],
            out[:, 3:],
            variance="learned_range",
            t_above=kept[-2] if s == 0 else None,
            clip_denoised=clip,
        )
    assert_close(total, r["total_bpd_clip" if clip else "total_bpd_noclip"])


def test_vectorized_prior_equals_scalar_prior():
    ts = np.array([1, 7, 4000])
    many = dpddpm.prior_bpd(SCHED, ts, G["x_start"])
    for j, t in enumerate(ts):
        assert torch.allclose(many[:, j], dpddpm.prior_bpd(SCHED, int(t), G["x_start"]), rtol=1e-12)


def test_fixed_variances_match_hand_formula():
    """fixed_small is beta~, fixed_large is beta; check one edge against the Gaussian KL by hand."""
    term = G["full_chain"]["terms"][4]  # t = 3 -> 2
    x0, x_t, eps = G["x_start"].double(), term["x_t"].double(), term["model_out"][:, :3].double()
    j = SCHED.jump(3, 2)
    from dpddpm.terms import predict_x0

    x0_hat = predict_x0(SCHED, 3, x_t, eps, True)
    d2 = (float(j.c1) * (x0 - x0_hat)) ** 2
    for kind, var in [("fixed_small", float(j.beta_post)), ("fixed_large", float(j.beta))]:
        kl = 0.5 * (np.log(var / j.beta_post) + j.beta_post / var - 1 + d2 / var)
        ref = kl.flatten(1).mean(1) / np.log(2)
        ours = dpddpm.edge_bpd(SCHED, 3, 2, x0, x_t, eps, variance=kind)
        assert torch.allclose(ours, ref, rtol=1e-12)
