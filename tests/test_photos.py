"""The tiny-photographs groundwork (issue 20): shipped splits, licences, baselines, a deterministic resumable run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import dpddpm
from dpddpm.photos import baselines as B
from dpddpm.photos import data as D
from dpddpm.photos.train import Recipe, Trainer, load_trained, make_model, train

ROOT = Path(__file__).resolve().parent.parent
BASELINES = {32: ROOT / "results" / "photos_baselines.json", 16: ROOT / "results" / "photos_baselines_16.json"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# --- data ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", D.SHIPPED_SPLITS)
def test_shipped_split_shape_and_grid(name):
    x = D.photos_split(name)
    meta = D.photos_metadata()["splits"][name]
    assert x.shape == (meta["N"], 3, 32, 32) and x.dtype == torch.float32
    assert 150 <= x.shape[0] <= 600  # a few hundred
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    levels = (x.double() + 1.0) * 127.5
    assert float((levels - levels.round()).abs().max()) < 1e-4  # float32 of k / 127.5 - 1: round-off only
    dpddpm.validation.check_data(x, (3, 32, 32), 256)  # the package's own grid check agrees
    assert len(D.split_records(name)) == x.shape[0]


def test_half_size_is_the_block_average():
    x32 = D.split_uint8("test")[:5].astype(np.float64)
    x16 = D.photos_split("test", 16)[:5]
    assert x16.shape == (5, 3, 16, 16)
    mean = x32.reshape(5, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    got = ((x16.double() + 1.0) * 127.5).permute(0, 2, 3, 1).numpy()
    assert np.abs(got - mean).max() <= 0.5 + 1e-4  # float32 levels: round-off
    with pytest.raises(ValueError, match="size"):
        D.photos_split("test", 8)


def test_splits_are_disjoint_by_photograph_and_licensed():
    meta = D.photos_metadata()
    by_split = {name: set(entry["photographs"]) for name, entry in meta["splits"].items()}
    assert set(by_split) == set(D.SPLITS)
    for a in D.SPLITS:
        for b in D.SPLITS:
            if a < b:
                assert not by_split[a] & by_split[b], (a, b)
    for name in D.SHIPPED_SPLITS:  # every shipped image names a photograph of its own split
        assert {r["photo"] for r in D.split_records(name)} == by_split[name]
    records = {p["name"]: p for p in meta["photographs"]}
    assert set(records) == set().union(*by_split.values())
    for p in records.values():
        assert p["licence"] and p["statement"] and p["stated_in"] and len(p["sha256"]) == 64, p["name"]
        assert p["split"] in by_split and p["name"] in by_split[p["split"]]
        if "BY" in p["licence"]:  # attribution licences carry their attribution line
            assert p["attribution"]
    assert {p.name for p in D.PHOTOGRAPHS} == set(records)


def test_crop_boxes_lie_inside_their_photographs():
    sizes = {p["name"]: p["size"] for p in D.photos_metadata()["photographs"]}
    for name in D.SHIPPED_SPLITS:
        for r in D.split_records(name):
            w, h = sizes[r["photo"]]
            left, top, right, bottom = r["box"]
            assert 0 <= left < right <= w + 0.01 and 0 <= top < bottom <= h + 0.01
            side = min(w, h) / r["scale"]  # a crop spans 1/n of the short side
            assert math.isclose(right - left, side, abs_tol=0.02) and math.isclose(bottom - top, side, abs_tol=0.02)


def test_area_downsample_is_exact_averaging():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(30, 45, 3), dtype=np.uint8)
    got = D.area_downsample(img, 10)  # factor 3: plain 3x3 block means
    want = np.rint(img.astype(np.float64).reshape(10, 3, 15, 3, 3).mean(axis=(1, 3)))
    assert got.shape == (10, 15, 3) and np.array_equal(got, want)
    w = D.area_weights(7, 3, 7 / 3)  # fractional factor: rows are normalised overlaps
    assert np.allclose(w.sum(axis=1), 1.0) and np.isclose(w[0, 2], (1 / 3) / (7 / 3))


def test_train_split_without_scikit_image_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "skimage" else real(name))
    D.split_uint8.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match="pip install scikit-image"):
            D.photos_split("train")
    finally:
        D.split_uint8.cache_clear()


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="selection"):
        D.photos_split("validation")


# --- baselines -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", sorted(BASELINES))
def test_baselines_match_the_committed_numbers(size):
    committed = json.loads(BASELINES[size].read_text())
    images = D.shrink(D.split_uint8("test"), size)
    assert committed["N"] == len(images) and committed["size"] == size
    png = B.png_bpd(images)
    # the PNG sizes come from zlib: equal with the recorded encoder, within 1 % of the mean otherwise
    assert math.isclose(png.mean(), committed["png"]["bpd"], rel_tol=1e-2)
    if B.webp_supported():
        sub = slice(0, 12)  # lossless WebP at effort 6 costs ~60 ms an image: a sample, image by image
        webp = B.webp_bpd(images[sub])
        assert np.allclose(webp, committed["per_image"]["webp"][sub], rtol=0.05)
        assert webp.mean() < png[sub].mean()
    assert committed["categorical"]["bpd"] > committed["png"]["bpd"]


def test_categorical_baseline_recomputed():
    pytest.importorskip("skimage", reason="the train split is rebuilt from scikit-image's photographs")
    committed = json.loads(BASELINES[32].read_text())
    cat = B.categorical_bpd(D.split_uint8("train"), D.split_uint8("test"))
    assert np.allclose(cat, committed["per_image"]["categorical"], rtol=1e-12, atol=0)
    assert math.isclose(cat.mean(), committed["categorical"]["bpd"], rel_tol=1e-12)


def test_categorical_baseline_with_known_answer():
    train = np.zeros((3, 1, 1, 3), np.uint8)  # every dimension always 0: p(0) = 4 / 259 after add-one
    test = np.zeros((2, 1, 1, 3), np.uint8)
    test[1] = 7  # an unseen level: p = 1 / 259
    got = B.categorical_bpd(train, test)
    assert np.allclose(got, [-math.log2(4 / 259), -math.log2(1 / 259)])


# --- training --------------------------------------------------------------------------------------------------


def _tiny_recipe(learn_sigma: bool = True) -> Recipe:
    return Recipe(
        "photos-hybrid" if learn_sigma else "photos-simple",
        learn_sigma=learn_sigma,
        image_size=16,
        batch_size=4,
        warmup=2,
        eval_every=100,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_at=(8,),
        num_heads=1,
        dropout=0.1,  # dropout on: the global generator must be saved and restored too
        T=50,
        quick_strata=2,
    )


@pytest.fixture(scope="module")
def tiny_data():
    x = D.photos_split("test", 16)
    return x[:16], x[-4:]


def _weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    ckpt = torch.load(folder / f"{name}.ckpt.pt", weights_only=True)
    return {**{f"net.{k}": v for k, v in ckpt["net"].items()}, **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


def test_training_is_deterministic_and_resumable(tmp_path, tiny_data):
    recipe = _tiny_recipe()
    tr, sel = tiny_data
    kw = dict(train_data=tr, select_data=sel, progress=False)
    runs = {}
    for run in ("a", "b"):
        train(recipe, tmp_path / run, steps=3, **kw)
        runs[run] = _weights(tmp_path / run, recipe.name)
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    train(recipe, tmp_path / "c", steps=2, **kw)
    at_two = _weights(tmp_path / "c", recipe.name)
    with pytest.raises(FileExistsError, match="--resume"):
        train(recipe, tmp_path / "c", steps=3, **kw)
    card = train(recipe, tmp_path / "c", steps=3, resume=True, **kw)
    resumed = _weights(tmp_path / "c", recipe.name)
    assert all(torch.allclose(resumed[k], runs["a"][k], rtol=1e-6, atol=1e-7) for k in resumed)
    assert any(not torch.equal(resumed[k], at_two[k]) for k in resumed)  # the third step did train
    assert card["training"]["recipe"]["steps"] == 3 and len(card["weights_sha256"]) == 64
    assert card["data"]["photographs"] and all(p["licence"] for p in card["data"]["photographs"])
    other = _tiny_recipe()
    other.lr = 1e-3
    with pytest.raises(ValueError, match="lr"):
        train(other, tmp_path / "c", steps=4, resume=True, **kw)


def test_trained_weights_load_and_one_elbo_is_finite(tmp_path, tiny_data):
    recipe = _tiny_recipe(learn_sigma=True)
    tr, sel = tiny_data
    train(recipe, tmp_path, steps=2, train_data=tr, select_data=sel, progress=False)
    model = load_trained(tmp_path, recipe.name)
    assert model.variance == "learned_range" and model.data_shape == (3, 16, 16)
    test = D.photos_split("test", 16)[:4]
    full = np.arange(recipe.T, 0, -1)
    est = dpddpm.elbo(model, test, full, batch_size=64, seed=3)
    again = dpddpm.elbo(model, test, full, batch_size=16, seed=3)
    assert math.isfinite(est.bpd) and est.stderr > 0
    assert math.isclose(est.bpd, again.bpd, rel_tol=1e-6)  # a recomputation in other batches agrees


def test_untrained_unet_elbo_at_32x32_is_finite():
    """The shipped 32x32 test images through an untrained UNet of the default architecture, short schedule."""
    recipe = Recipe("photos-simple", learn_sigma=False, T=20, channel_mult=(1, 2))
    torch.manual_seed(0)
    model = make_model(recipe).eval()
    est = dpddpm.elbo(model, D.photos_split("test")[:4], np.arange(20, 0, -1), batch_size=80)
    assert math.isfinite(est.bpd) and est.bpd > 0


def test_trainer_refuses_data_of_the_wrong_shape(tiny_data):
    tr, sel = tiny_data
    with pytest.raises(ValueError, match="shape"):
        Trainer(_tiny_recipe(), D.photos_split("test")[:4], sel)
