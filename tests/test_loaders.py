"""Loading pretrained models: improved-diffusion checkpoints (golden data) and diffusers folders."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_models import tiny_diffusers_unet

from dpddpm.external import (
    IMPROVED_DIFFUSION_DEFAULTS,
    PRESETS,
    CheckpointMismatchError,
    build_improved_diffusion_unet,
    diffusers_scheduler_config,
    improved_diffusion_flags,
    load_diffusers,
    load_improved_diffusion,
    to_diffusers_timesteps,
)
from dpddpm.schedule import NoiseSchedule
from dpddpm.terms import edge_bpd, jump_log_variance, predict_x0, prior_bpd

DATA = Path(__file__).parent / "data"


# --------------------------------------------------------------------------------------------------
# improved-diffusion: golden data
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(DATA / "improved_diffusion_small_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def golden_ckpt(golden: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small golden model's weights as an improved-diffusion checkpoint file (a plain state_dict)."""
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    torch.save(golden["state_dict"], path)
    return path


@pytest.fixture(scope="module")
def golden_model(golden: dict, golden_ckpt: Path):
    return load_improved_diffusion(golden_ckpt, **golden["flags"])


def test_golden_model_configuration(golden: dict, golden_model) -> None:
    m = golden_model
    assert m.variance == "learned_range" and m.time_input == "rescaled"
    assert m.data_shape == (3, 32, 32) and m.num_bins == 256 and m.clip_denoised
    assert m.schedule.T == 4000
    np.testing.assert_allclose(m.schedule.alpha_bar[1:], golden["alphas_cumprod"].numpy(), rtol=1e-12)
    # The net receives improved-diffusion's rescaled float time (t - 1) * 1000 / T.
    torch.testing.assert_close(m.net_time(torch.tensor([41, 3001])), golden["forward"]["t_scaled"])


def _terms(golden: dict):
    for chain in ("respaced", "full_chain"):
        for term in golden[chain]["terms"]:
            yield chain, term


def test_golden_terms(golden: dict, golden_model) -> None:
    """Every stored ELBO term, recomputed from our network output and our edge_bpd."""
    x0 = golden["x_start"].double()
    sched = golden_model.schedule
    for chain, term in _terms(golden):
        t, s = term["t"], term["s"]
        eps, v = golden_model.predict(term["x_t"], torch.full((2,), t))
        out = torch.cat([eps, v], dim=1)
        ref_out = term["model_out"]
        torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5 * float(ref_out.abs().max()))
        bpd = edge_bpd(
            sched,
            t,
            s,
            x0,
            term["x_t"].double(),
            eps,
            v,
            variance="learned_range",
            t_above=term["t_above"] if s == 0 else None,
            clip_denoised=term["clip_denoised"],
        )
        ref = term["bpd"].double()
        ok = ((bpd - ref).abs() <= 1e-4 * ref.abs()) | ((bpd - ref).abs() <= 1e-6)
        assert ok.all(), f"{chain} t={t} s={s} clip={term['clip_denoised']}: {bpd.tolist()} vs {ref.tolist()}"


def test_golden_prior_and_totals(golden: dict, golden_model) -> None:
    x0 = golden["x_start"].double()
    sched = golden_model.schedule
    for chain in ("respaced", "full_chain"):
        torch.testing.assert_close(
            prior_bpd(sched, sched.T, x0), golden[chain]["prior_bpd"].double(), rtol=1e-4, atol=1e-6
        )
    # total = prior + every term of the 10-step schedule, for both clip settings.
    for clip, key in ((True, "total_bpd_clip"), (False, "total_bpd_noclip")):
        total = prior_bpd(sched, sched.T, x0)
        for term in golden["respaced"]["terms"]:
            if term["clip_denoised"] != clip:
                continue
            eps, v = golden_model.predict(term["x_t"], torch.full((2,), term["t"]))
            total = total + edge_bpd(
                sched,
                term["t"],
                term["s"],
                x0,
                term["x_t"].double(),
                eps,
                v,
                variance="learned_range",
                t_above=term["t_above"],
                clip_denoised=clip,
            )
        torch.testing.assert_close(total, golden["respaced"][key].double(), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# improved-diffusion: flags and errors
# --------------------------------------------------------------------------------------------------


def test_flags_resolution_order() -> None:
    f = improved_diffusion_flags("cifar10_uncond_50M_500K", num_res_blocks=2, learn_sigma="False")
    assert f["num_res_blocks"] == 2 and f["learn_sigma"] is False  # explicit flags win, strings parsed
    assert f["image_size"] == 32 and f["noise_schedule"] == "cosine"  # from the preset
    assert f["rescale_timesteps"] is True and f["attention_resolutions"] == "16,8"  # defaults
    assert improved_diffusion_flags()["num_res_blocks"] == IMPROVED_DIFFUSION_DEFAULTS["num_res_blocks"] == 2
    assert improved_diffusion_flags(attention_resolutions=[16])["attention_resolutions"] == "16"
    assert set(PRESETS) == {
        "cifar10_uncond_50M_500K",
        "cifar10_uncond_vlb_50M_500K",
        "imagenet64_uncond_100M_1500K",
        "imagenet64_uncond_vlb_100M_1500K",
    }


def test_unknown_flag_and_preset() -> None:
    with pytest.raises(ValueError, match=r"unknown improved-diffusion flag.*num_chanels.*valid flags:.*num_channels"):
        improved_diffusion_flags(num_chanels=64)
    with pytest.raises(ValueError, match="unknown preset"):
        improved_diffusion_flags("cifar10")
    with pytest.raises(ValueError, match="image_size"):
        build_improved_diffusion_unet(image_size=48)
    with pytest.raises(NotImplementedError, match="class-conditional"):
        build_improved_diffusion_unet(class_cond=True)


def test_fixed_variance_linear_index_model(tmp_path: Path) -> None:
    flags = dict(
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        sigma_small=True,
        rescale_timesteps=False,
        diffusion_steps=100,
        noise_schedule="linear",
    )
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(build_improved_diffusion_unet(**flags).state_dict(), path)
    m = load_improved_diffusion(path, **flags, clip_denoised=False)
    assert m.variance == "fixed_small" and m.time_input == "index" and not m.clip_denoised
    np.testing.assert_allclose(m.schedule.alpha_bar, NoiseSchedule.linear(100).alpha_bar)
    np.testing.assert_allclose(m.schedule.betas[[0, -1]], [1e-3, 0.2])  # 1e-4 and 0.02 scaled by 1000/100
    eps, v = m.predict(torch.zeros(2, 3, 32, 32), torch.tensor([1, 100]))
    assert eps.shape == (2, 3, 32, 32) and v is None
    assert load_improved_diffusion(path, **dict(flags, sigma_small=False)).variance == "fixed_large"


def test_wrong_preset_lists_keys(golden_ckpt: Path) -> None:
    with pytest.raises(CheckpointMismatchError) as info:
        load_improved_diffusion(golden_ckpt, preset="cifar10_uncond_50M_500K")
    msg = str(info.value)
    assert str(golden_ckpt) in msg
    assert "missing keys" in msg and "shape mismatches" in msg
    # cifar10 has 3 res blocks per level and 128 channels, the file 1 and 32.
    assert "missing keys (254): input_blocks.2.0.in_layers.0.weight" in msg
    assert "unexpected keys (30): input_blocks.2.0.op.weight" in msg
    assert "time_embed.0.weight: checkpoint (128, 32) vs model (512, 128)" in msg
    assert "suggest: {'num_channels': 32, 'learn_sigma': True}" in msg
    assert "flags tried" in msg and "'num_res_blocks': 3" in msg
    assert isinstance(info.value, ValueError)


def test_mismatch_names_the_matching_preset(golden: dict, tmp_path: Path) -> None:
    """A released-size checkpoint loaded with wrong flags: the error points at the right preset."""
    from dpddpm.external.improved_diffusion import _meta_shapes, _mismatch_message

    state = {
        k: torch.empty(shape, device="meta")
        for k, shape in _meta_shapes(improved_diffusion_flags("imagenet64_uncond_100M_1500K")).items()
    }
    flags = improved_diffusion_flags("cifar10_uncond_50M_500K")
    msg = _mismatch_message(tmp_path / "x.pt", flags, state, _meta_shapes(flags))
    assert "match preset(s) imagenet64_uncond_100M_1500K, imagenet64_uncond_vlb_100M_1500K" in msg


def test_unexpected_keys_are_listed(golden: dict, tmp_path: Path) -> None:
    state = dict(golden["state_dict"], **{"label_emb.weight": torch.zeros(1000, 128)})
    path = tmp_path / "cond.pt"
    torch.save(state, path)
    expected = r"(?s)unexpected keys \(1\): label_emb.weight.*class-conditional"
    with pytest.raises(CheckpointMismatchError, match=expected):
        load_improved_diffusion(path, **golden["flags"])


def test_missing_truncated_and_foreign_files(golden_ckpt: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_improved_diffusion(missing, preset="cifar10_uncond_50M_500K")
    truncated = tmp_path / "truncated.pt"
    data = golden_ckpt.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_improved_diffusion(truncated, preset="cifar10_uncond_50M_500K")
    foreign = tmp_path / "foreign.pt"
    torch.save({"step": 3}, foreign)
    with pytest.raises(ValueError, match="plain state_dict"):
        load_improved_diffusion(foreign, preset="cifar10_uncond_50M_500K")


# --------------------------------------------------------------------------------------------------
# diffusers export (no diffusers needed)
# --------------------------------------------------------------------------------------------------


def test_to_diffusers_timesteps() -> None:
    assert to_diffusers_timesteps([1000, 500, 20, 1]) == [999, 499, 19, 0]
    assert to_diffusers_timesteps(np.array([4, 2, 1]), T=4) == [3, 1, 0]
    assert to_diffusers_timesteps(torch.tensor([2, 1])) == [1, 0]
    for bad, msg in [
        ([5, 5, 1], "strictly decreasing"),
        ([1, 5], "strictly decreasing"),
        ([9, 4, 2], "end at"),
        ([3.5, 1], "integers"),
        ([1], "at least 2"),
    ]:
        with pytest.raises(ValueError, match=msg):
            to_diffusers_timesteps(bad)
    with pytest.raises(ValueError, match="above T"):
        to_diffusers_timesteps([11, 1], T=10)


def test_missing_diffusers_gives_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "scheduler_config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"pip install 'dpddpm\[diffusers\]'"):
        load_diffusers(tmp_path)


# --------------------------------------------------------------------------------------------------
# diffusers folders
# --------------------------------------------------------------------------------------------------


def _save_pipeline(folder: Path, out_channels: int = 3, **scheduler_kwargs):
    diffusers = pytest.importorskip("diffusers")
    unet = tiny_diffusers_unet(out_channels)
    kwargs = dict(num_train_timesteps=50, beta_schedule="linear", variance_type="fixed_large")
    kwargs.update(scheduler_kwargs)
    scheduler = diffusers.DDPMScheduler(**kwargs)
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    return unet, scheduler


def test_load_diffusers_fixed_large(tmp_path: Path) -> None:
    unet, scheduler = _save_pipeline(tmp_path)
    m = load_diffusers(tmp_path)
    assert m.variance == "fixed_large" and m.time_input == "index"
    assert m.data_shape == (3, 8, 8) and m.T == 50 and m.clip_denoised  # clip_sample defaults to True
    np.testing.assert_allclose(m.schedule.betas, np.linspace(1e-4, 0.02, 50))
    np.testing.assert_allclose(m.schedule.alpha_bar[1:], scheduler.alphas_cumprod.double().numpy(), rtol=1e-6)
    x = torch.randn(4, 3, 8, 8)
    t = torch.tensor([1, 2, 25, 50])
    eps, v = m.predict(x, t)
    assert v is None
    with torch.no_grad():
        ref = unet(x, t - 1).sample  # diffusers' nets take the 0-based index
    torch.testing.assert_close(eps, ref, rtol=1e-5, atol=1e-5)
    assert not load_diffusers(tmp_path, clip_denoised=False).clip_denoised


def test_load_diffusers_top_level_layout(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    tiny_diffusers_unet().save_pretrained(tmp_path)
    diffusers.DDPMScheduler(num_train_timesteps=20, variance_type="fixed_small_log", clip_sample=False).save_pretrained(
        tmp_path
    )
    m = load_diffusers(tmp_path)
    assert m.variance == "fixed_small" and m.T == 20 and not m.clip_denoised


def test_load_diffusers_learned_range_splits(tmp_path: Path) -> None:
    unet, _ = _save_pipeline(tmp_path, out_channels=6, variance_type="learned_range")
    m = load_diffusers(tmp_path)
    assert m.variance == "learned_range"
    x = torch.randn(2, 3, 8, 8)
    eps, v = m.predict(x, torch.tensor([3, 40]))
    with torch.no_grad():
        ref = unet(x, torch.tensor([2, 39])).sample
    torch.testing.assert_close(eps, ref[:, :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, ref[:, 3:], rtol=1e-5, atol=1e-5)


def test_load_diffusers_errors(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_diffusers(tmp_path / "absent")
    tiny_diffusers_unet().save_pretrained(tmp_path / "unet")
    with pytest.raises(FileNotFoundError, match="no scheduler"):
        load_diffusers(tmp_path)
    for kwargs, msg in [
        (dict(prediction_type="v_prediction"), "prediction_type"),
        (dict(variance_type="learned"), "variance_type"),
        (dict(variance_type="learned_range"), "6 output channels"),
    ]:
        diffusers.DDPMScheduler(num_train_timesteps=10, **kwargs).save_pretrained(tmp_path / "scheduler")
        with pytest.raises((NotImplementedError, ValueError), match=msg):
            load_diffusers(tmp_path)
    (tmp_path / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no UNet2DModel"):
        load_diffusers(tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(beta_schedule="squaredcos_cap_v2"),
        dict(beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02),
        dict(trained_betas=np.linspace(1e-4, 0.01, 4000).tolist()),
    ],
)
def test_diffusers_schedules_match(kwargs: dict) -> None:
    """Our float64 schedules equal diffusers' float32 ones to float32 accuracy (cumprod over 4000 steps)."""
    diffusers = pytest.importorskip("diffusers")
    from dpddpm.external import diffusers_schedule

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=4000, **kwargs)
    ours = diffusers_schedule(dict(scheduler.config))
    np.testing.assert_allclose(ours.alpha_bar[1:], scheduler.alphas_cumprod.double().numpy(), rtol=1e-4)
    if kwargs.get("beta_schedule") == "squaredcos_cap_v2":
        np.testing.assert_array_equal(ours.alpha_bar, NoiseSchedule.cosine(4000).alpha_bar)


def test_diffusers_scheduler_config_roundtrip() -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = NoiseSchedule.cosine(1000)
    config = diffusers_scheduler_config(sched, variance="learned_range")
    scheduler = diffusers.DDPMScheduler(**config)
    assert scheduler.config.variance_type == "learned_range" and scheduler.config.clip_sample
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), sched.alpha_bar[1:], rtol=1e-4)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("clip", [True, False])
def test_diffusers_ddpm_scheduler_steps_match_ours(tmp_path: Path, variance: str, clip: bool) -> None:
    """Run diffusers' DDPMScheduler on a dpddpm schedule and compare every step with our reverse process.

    Where the conventions coincide they are the same chain: ``set_timesteps(timesteps=[t_K - 1, ..., 0])``
    jumps t -> s between kept times with beta_{t|s} = 1 - alpha_bar_t / alpha_bar_s, mean c1 x^_0 + c2 x_t,
    variance beta~_{s|t} (fixed_small), beta_{t|s} (fixed_large) or their log interpolation (learned_range),
    and the last step returns x^_0 without noise. They differ in that diffusers keeps alpha_bar in float32
    (our coefficients are float64: the samples agree to ~1e-4 here), has no ELBO decoder term, and that
    ``DDIMScheduler`` takes no timestep list at all.
    """
    pytest.importorskip("diffusers")
    out_channels = 6 if variance == "learned_range" else 3
    _, scheduler = _save_pipeline(tmp_path, out_channels, variance_type=variance, clip_sample=clip)
    m = load_diffusers(tmp_path)
    assert m.clip_denoised == clip
    sched = m.schedule
    schedule = [50, 31, 12, 5, 2, 1]
    scheduler.set_timesteps(timesteps=to_diffusers_timesteps(schedule, T=sched.T))
    assert scheduler.timesteps.tolist() == [49, 30, 11, 4, 1, 0]

    gen_theirs, gen_ours = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for i, index in enumerate(scheduler.timesteps):
        t, s = schedule[i], schedule[i + 1] if i + 1 < len(schedule) else 0
        with torch.no_grad():
            net_out = m.net(x, index).sample
        step = scheduler.step(net_out, index, x, generator=gen_theirs)

        eps, v = m.predict(x, torch.full((2,), t))
        x0_hat = predict_x0(sched, t, x, eps, clip)
        torch.testing.assert_close(step.pred_original_sample.double(), x0_hat, rtol=1e-5, atol=1e-5)
        if s == 0:
            ours = x0_hat  # the last call returns x^_0 in both
        else:
            jump = sched.jump(t, s)
            log_var = jump_log_variance(sched, t, s, v, variance)
            noise = torch.randn(x.shape, generator=gen_ours, dtype=x.dtype).double()
            std = torch.exp(0.5 * torch.as_tensor(log_var, dtype=torch.float64))
            ours = float(jump.c1) * x0_hat + float(jump.c2) * x.double() + std * noise
        torch.testing.assert_close(step.prev_sample.double(), ours, rtol=1e-4, atol=2e-4)
        x = step.prev_sample


def test_cost_matrix_of_a_diffusers_model(tmp_path: Path) -> None:
    costs = pytest.importorskip("dpddpm.checkpoint")
    _save_pipeline(tmp_path, out_channels=6, variance_type="learned_range")
    m = load_diffusers(tmp_path)
    data = torch.randint(0, 256, (3, 3, 8, 8), generator=torch.Generator().manual_seed(0)) / 127.5 - 1
    c = costs.cost_matrix(m, data, batch_size=64, progress=False)
    T = m.T
    assert c.kl.shape == (T + 1, T + 1) and c.decoder.shape == (T + 1,) and c.prior.shape == (T + 1,)
    t, s = np.tril_indices(T + 1, -1)
    valid = s >= 1
    assert np.isfinite(c.kl[t[valid], s[valid]]).all()
    assert np.isfinite(c.decoder[2:]).all() and np.isfinite(c.prior[1:]).all()
    assert (c.kl[t[valid], s[valid]] > 0).all()
    assert not math.isnan(float(c.stderr[T, 1]))
