"""The improved-diffusion UNet: exact state-dict layout of the released checkpoints, and the golden forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dpddpm.external import PRESETS, build_improved_diffusion_unet
from dpddpm.external.unet import AttentionBlock, UNetModel, timestep_embedding

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(DATA / "improved_diffusion_small_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def manifests() -> dict:
    return json.loads((DATA / "improved_diffusion_manifests.json").read_text())


@pytest.mark.parametrize("name", ["cifar10_uncond_50M_500K", "imagenet64_uncond_100M_1500K"])
def test_released_architecture_matches_manifest(name: str, manifests: dict) -> None:
    manifest = manifests[name]
    # The manifest's README flags agree with our preset (the preset adds the diffusion flags).
    assert {k: PRESETS[name][k] for k in manifest["flags"]} == manifest["flags"]
    with torch.device("meta"):
        net = build_improved_diffusion_unet(**manifest["flags"])
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    expected = manifest["state_dict_shapes"]
    assert sorted(set(expected) - set(shapes)) == []  # missing
    assert sorted(set(shapes) - set(expected)) == []  # unexpected
    assert shapes == expected
    assert sum(p.numel() for p in net.parameters()) == manifest["n_params"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds(name: str) -> None:
    with torch.device("meta"):
        net = build_improved_diffusion_unet(name)
    assert net.out_channels == 6


def _small_net(golden: dict) -> UNetModel:
    net = build_improved_diffusion_unet(**golden["flags"])
    net.load_state_dict(golden["state_dict"], strict=True)
    return net.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_golden_forward(golden: dict, dtype: torch.dtype) -> None:
    net = _small_net(golden).to(dtype)
    fwd = golden["forward"]
    with torch.no_grad():
        out = net(fwd["x"].to(dtype), fwd["t_scaled"])
    ref = fwd["out"].to(dtype)
    assert out.shape == ref.shape == (2, 6, 32, 32)
    scale = ref.abs().max()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * float(scale))
    assert out.dtype == dtype


def test_integer_and_float_times_agree(golden: dict) -> None:
    net = _small_net(golden)
    x = golden["forward"]["x"]
    t = torch.tensor([3, 999])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), net(x, t.float()))


def test_timestep_embedding_layout() -> None:
    t = torch.tensor([0.0, 2.5])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (2, 8) and emb.dtype == torch.float32
    freqs = torch.exp(-torch.log(torch.tensor(1e4)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1, :4], torch.cos(2.5 * freqs))  # cos first, then sin
    torch.testing.assert_close(emb[1, 4:], torch.sin(2.5 * freqs))
    assert timestep_embedding(t, 7).shape == (2, 7)


def test_attention_uses_legacy_per_head_layout() -> None:
    """q, k, v of one head are adjacent channel blocks of the qkv output (not q of all heads first)."""
    torch.manual_seed(0)
    block = AttentionBlock(64, num_heads=2).eval()
    torch.nn.init.normal_(block.proj_out.weight)
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        qkv = block.qkv(block.norm(x.reshape(2, 64, 16)))  # (B, 3C, L)
        heads = qkv.reshape(2 * 2, 3 * 32, 16)
        q, k, v = heads[:, :32], heads[:, 32:64], heads[:, 64:]
        w = torch.softmax(torch.einsum("bcl,bcm->blm", q, k) / 32**0.5, dim=-1)
        h = torch.einsum("blm,bcm->bcl", w, v).reshape(2, 64, 16)
        expected = (x.reshape(2, 64, 16) + block.proj_out(h)).reshape(x.shape)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_runs(golden: dict) -> None:
    net = _small_net(golden)
    fwd = golden["forward"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(fwd["x"], fwd["t_scaled"])
    assert torch.isfinite(out).all()
    assert (out.float() - fwd["out"]).abs().max() < 0.05 * fwd["out"].abs().max()
