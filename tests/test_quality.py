"""The digits sample-quality scores (dpddpm.digits.quality) and the classifier behind them (dpddpm.digits.classifier).

The Fréchet distance is checked against closed forms and an independent matrix square root; the scores on real,
re-split and noise-damaged images; the bundled weights against their card; the training for reproducibility
(a few steps only: the full run is ``python -m dpddpm.digits.train_classifier``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dpddpm.digits import classifier_card, digits_labels, digits_split, load_classifier
from dpddpm.digits.classifier import CLASSIFIER_NAME, accuracy, file_sha256
from dpddpm.digits.data import SPLITS
from dpddpm.digits.frechet import frechet_distance, frechet_distance_gaussians, gaussian_stats
from dpddpm.digits.quality import DigitsScore, add_noise, load_digits_score
from dpddpm.digits.train_classifier import ClassifierRecipe, train_classifier
from dpddpm.digits.train_classifier import main as train_main

SIGMAS = (0.0, 0.1, 0.2, 0.4, 0.8)


@pytest.fixture(scope="module")
def score() -> DigitsScore:
    return load_digits_score()


# --- the Fréchet distance ---------------------------------------------------------------------------------------


def with_moments(rng: np.random.Generator, n: int, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """n points (n, D) whose sample mean is exactly mu and whose sample covariance (ddof 1) is exactly cov."""
    z = rng.standard_normal((n, len(mu)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)))).T  # sample covariance I
    w, v = np.linalg.eigh(cov)
    return z @ (v * np.sqrt(np.clip(w, 0, None))).T + mu  # any factor F with F F^T = cov, rank-deficient too


def random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_cov(rng: np.random.Generator, d: int, cond: float = 1e3) -> np.ndarray:
    q = random_orthogonal(rng, d)
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


def trace_sqrt_denman_beavers(a: np.ndarray, iters: int = 60) -> float:
    """tr sqrt(a) of a non-symmetric a with positive eigenvalues, by the Denman–Beavers iteration (no eigen-
    decomposition: independent of the route in dpddpm.digits.frechet)."""
    y, z = a.copy(), np.eye(len(a))
    for _ in range(iters):
        y, z = 0.5 * (y + np.linalg.inv(z)), 0.5 * (z + np.linalg.inv(y))
    return float(np.trace(y))


@pytest.mark.parametrize(
    "a, b, rel",
    [
        ([4.0, 2.0, 1.0, 0.5, 0.1, 0.01], [1.0, 3.0, 0.25, 0.5, 0.2, 0.01], 1e-10),
        # dead features (zero variance, as a ReLU unit can be): sqrt is not Lipschitz at 0, so round-off eigenvalues
        # of ~1e-16 contribute ~1e-8 and the tolerance is that of sqrt(machine epsilon)
        ([4.0, 2.0, 1.0, 0.5, 0.1, 0.0], [1.0, 3.0, 0.25, 0.5, 0.0, 0.0], 1e-7),
    ],
)
def test_frechet_distance_equals_the_closed_form_of_commuting_gaussians(a: list, b: list, rel: float) -> None:
    """Same eigenvectors: FD = |mu_a - mu_b|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(0)
    a, b = np.array(a), np.array(b)
    q = random_orthogonal(rng, len(a))
    mu_a, mu_b = rng.standard_normal(len(a)), rng.standard_normal(len(a))
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    cov_a, cov_b = (q * a) @ q.T, (q * b) @ q.T
    assert frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=rel)
    assert frechet_distance(with_moments(rng, 50, mu_a, cov_a), with_moments(rng, 70, mu_b, cov_b)) == pytest.approx(
        expected, rel=rel
    )


def test_frechet_distance_in_one_dimension() -> None:
    """(mu_a - mu_b)^2 + (s_a - s_b)^2."""
    rng = np.random.default_rng(3)
    x, y = with_moments(rng, 10, np.array([1.0]), np.array([[4.0]])), with_moments(rng, 9, np.array([-2.0]), np.eye(1))
    assert frechet_distance(x, y) == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_frechet_distance_is_symmetric_and_zero_for_identical_sets() -> None:
    rng = np.random.default_rng(1)
    fa = with_moments(rng, 300, rng.standard_normal(32), random_cov(rng, 32))
    fb = with_moments(rng, 300, rng.standard_normal(32), random_cov(rng, 32))
    ab = frechet_distance(fa, fb)
    assert ab > 1.0
    assert frechet_distance(fb, fa) == pytest.approx(ab, rel=1e-10)
    assert frechet_distance(fa, fa) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(torch.from_numpy(fa), torch.from_numpy(fb)) == pytest.approx(ab, rel=1e-12)


@pytest.mark.parametrize("cond", [10.0, 1e3, 1e6])
def test_frechet_distance_agrees_with_an_independent_matrix_square_root(cond: float) -> None:
    """Non-commuting covariances: the eigen route against Denman–Beavers on the non-symmetric S_a S_b."""
    rng = np.random.default_rng(int(cond))
    d = 32
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    cov_a, cov_b = random_cov(rng, d, cond), random_cov(rng, d, cond)
    diff = mu_a - mu_b
    expected = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt_denman_beavers(cov_a @ cov_b)
    got = frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b)
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-8)
    # and from features carrying exactly those moments
    assert frechet_distance(with_moments(rng, 200, mu_a, cov_a), with_moments(rng, 100, mu_b, cov_b)) == pytest.approx(
        expected, rel=1e-8, abs=1e-8
    )


def test_gaussian_stats_match_numpy() -> None:
    x = np.random.default_rng(2).standard_normal((40, 5))
    mu, cov = gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(cov, np.cov(x.T, ddof=1), rtol=1e-12)


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.zeros((1, 3)), np.zeros((5, 3)), "at least 2"),
        (np.zeros((5, 3)), np.zeros((5, 4)), "dimensions differ"),
        (np.zeros(5), np.zeros((5, 1)), "2-D"),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), "NaN"),
    ],
)
def test_frechet_distance_refuses_bad_features(a: np.ndarray, b: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


# --- the scores on real and damaged images ----------------------------------------------------------------------


def test_real_held_out_images_score_within_the_noise_floor(score: DigitsScore) -> None:
    """Selection vs test (300 vs 300) is no worse than random re-splits of the same 600 images; damaged images are
    far outside that range, so the criterion can fail."""
    floor = score.noise_floor(size=300, repeats=20, seed=0)
    assert floor.size == 300 and len(floor.values) == 20 and floor.std > 0
    assert floor.mean > 0  # the upward bias at finite N: real vs real is not 0
    real = score.fid(digits_split("selection"))
    assert real < floor.mean + 3 * floor.std
    assert score.fid(add_noise(digits_split("selection"), 0.8)) > floor.mean + 10 * floor.std


def test_growing_noise_scores_monotonically_worse(score: DigitsScore) -> None:
    selection = digits_split("selection")
    results = [score.score_seeds([add_noise(selection, s, seed) for seed in range(3)]) for s in SIGMAS]
    fids = [r.fid.mean for r in results]
    confs = [r.confidence.mean for r in results]
    assert np.all(np.diff(fids) > 0), fids
    assert np.all(np.diff(confs) < 0), confs
    assert confs[0] > 0.95 and confs[-1] < 0.9


def test_score_seeds_aggregates_the_per_set_scores(score: DigitsScore) -> None:
    sets = [add_noise(digits_split("selection"), 0.3, seed) for seed in range(3)]
    res = score.score_seeds(sets, reference="test")
    fids = np.array([score.fid(s) for s in sets])
    confs = np.array([score.confidence(s).mean for s in sets])
    np.testing.assert_allclose(res.fids, fids, rtol=1e-12)
    np.testing.assert_allclose(res.confidences, confs, rtol=1e-12)
    assert res.fid.mean == pytest.approx(fids.mean(), rel=1e-12)
    assert res.fid.stderr == pytest.approx(fids.std(ddof=1) / np.sqrt(3), rel=1e-10)
    assert res.confidence.stderr == pytest.approx(confs.std(ddof=1) / np.sqrt(3), rel=1e-10)
    assert res.n_images == 300 and res.n_reference == 300
    with pytest.raises(ValueError, match="equal sizes"):
        score.score_seeds([sets[0], sets[1][:200]])
    with pytest.raises(ValueError, match="at least one"):
        score.score_seeds([])


def test_fid_reference_by_name_or_images_agree(score: DigitsScore) -> None:
    x = add_noise(digits_split("selection"), 0.2)
    assert score.fid(x) == pytest.approx(score.fid(x, reference=digits_split("test")), rel=1e-12)
    assert score.fid(x, reference="train") != pytest.approx(score.fid(x), rel=1e-3)


def test_confidence_is_the_mean_max_probability_with_its_stderr(score: DigitsScore) -> None:
    x = add_noise(digits_split("test"), 0.4)
    top = score.probabilities(x).max(dim=1).values.numpy()
    conf = score.confidence(x)
    assert conf.mean == pytest.approx(top.mean(), rel=1e-12)
    assert conf.stderr == pytest.approx(top.std(ddof=1) / np.sqrt(len(top)), rel=1e-10)
    assert 0.1 <= conf.mean <= 1.0
    feats = score.features(x)
    assert feats.shape == (300, 32) and feats.dtype == torch.float64


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.zeros(5, 8, 8), r"shape \(N, 1, 8, 8\)"),
        (torch.zeros(5, 3, 8, 8), r"shape \(N, 1, 8, 8\)"),
        (torch.zeros(1, 1, 8, 8), "at least 2"),
        (torch.full((4, 1, 8, 8), float("nan")), "NaN"),
        (torch.full((4, 1, 8, 8), 16.0), r"\[-1, 1\]"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.long), "floating point"),
    ],
)
def test_scores_refuse_bad_images(score: DigitsScore, images: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        score.fid(images)
    with pytest.raises(ValueError, match=match):
        score.confidence(images)


def test_images_in_0_1_draw_a_warning(score: DigitsScore) -> None:
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        score.features((digits_split("test") + 1) / 2)


# --- the classifier and its weights -----------------------------------------------------------------------------


def test_digits_labels_follow_the_split_order() -> None:
    """Each (image, label) pair of a split is a pair of scikit-learn's data set (found by the image's pixels)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    labels_of = {}
    for img, y in zip(raw.images, raw.target):
        labels_of.setdefault(img.astype(np.int64).tobytes(), set()).add(int(y))
    for name in SPLITS:
        x, y = digits_split(name), digits_labels(name)
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        levels = torch.round((x[:, 0] + 1) * 8).long().numpy()
        assert all(int(lab) in labels_of[img.tobytes()] for img, lab in zip(levels, y))
    with pytest.raises(ValueError, match="unknown digits split"):
        digits_labels("validation")


def test_card_accuracy_matches_a_recomputation() -> None:
    card, model = classifier_card(), load_classifier()
    test_acc = accuracy(model, digits_split("test"), digits_labels("test"))
    assert card["test_accuracy"] == pytest.approx(test_acc, abs=1e-12)
    assert card["selection_accuracy"] == pytest.approx(
        accuracy(model, digits_split("selection"), digits_labels("selection")), abs=1e-12
    )
    assert test_acc >= 0.97
    assert card["net"]["features"] == 32 and card["training"]["seed"] == 0


@pytest.fixture
def weights_copy(tmp_path):
    """The bundled weights and card copied to tmp_path; returns the .pt path."""
    card = classifier_card()
    pt = tmp_path / f"{CLASSIFIER_NAME}.pt"
    model = load_classifier()
    torch.save(model.state_dict(), pt)
    (tmp_path / f"{CLASSIFIER_NAME}.json").write_text(json.dumps({**card, "sha256": file_sha256(pt)}))
    return pt


def test_loading_a_copy_gives_the_bundled_weights(weights_copy) -> None:
    a, b = load_classifier(weights_copy), load_classifier()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_loading_refuses_damaged_or_mismatched_weights(weights_copy) -> None:
    blob = bytearray(weights_copy.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights_copy.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="do not match their card: their sha256"):
        load_classifier(weights_copy)


def test_loading_refuses_a_card_of_another_architecture(weights_copy) -> None:
    card_path = weights_copy.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["net"]["features"] = 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_classifier(weights_copy)


def test_loading_without_a_card_is_refused(weights_copy) -> None:
    shutil.move(weights_copy.with_suffix(".json"), weights_copy.with_suffix(".bak"))
    with pytest.raises(FileNotFoundError, match="classifier card"):
        load_classifier(weights_copy)


SHORT = ClassifierRecipe(steps=12, batch_size=32, warmup=4)


def test_training_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, _ = train_classifier(SHORT, seed=0)
    b, _ = train_classifier(SHORT, seed=0)
    c, _ = train_classifier(SHORT, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    for k, va in a.state_dict().items():
        torch.testing.assert_close(va, b.state_dict()[k], rtol=1e-5, atol=1e-6)
    assert max(float((va - c.state_dict()[k]).abs().max()) for k, va in a.state_dict().items()) > 1e-3


def test_training_cli_writes_weights_that_load(tmp_path) -> None:
    train_main(["--out", str(tmp_path), "--steps", "3", "--seed", "5", "--threads", str(torch.get_num_threads())])
    pt = tmp_path / f"{CLASSIFIER_NAME}.pt"
    card = classifier_card(pt)
    assert card["sha256"] == file_sha256(pt)
    assert card["training"]["seed"] == 5 and card["training"]["recipe"]["steps"] == 3
    assert card["command"].startswith("python -m dpddpm.digits.train_classifier") and "--seed 5" in card["command"]
    model = load_classifier(pt)
    assert card["test_accuracy"] == pytest.approx(
        accuracy(model, digits_split("test"), digits_labels("test")), abs=1e-12
    )
    assert torch.load(pt, weights_only=True).keys() == model.state_dict().keys()
