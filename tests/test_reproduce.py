"""The Table-1 pipeline as a library: the selection/test split, the protocol's seeds and batch sizes, the
"within gap" summary, a given full-chain ELBO, a run that writes nothing, and the typed results that become
``results.json`` through one function."""

import json
import pickle

import numpy as np
import pytest
import torch
from toy_models import discrete_data, tiny_model

import dpddpm
from dpddpm.analytic import AnalyticVariances
from dpddpm.files import json_safe
from dpddpm.pipeline import ReproduceOptions, ReproduceResults
from dpddpm.reproduce import reproduce, selection_and_test, smallest_k_within


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)


def test_one_pool_is_split_without_overlap(tmp_path):
    np.savez(tmp_path / "x.npz", data=_images(10, 0))
    pool = dpddpm.load_images(tmp_path / "x.npz")
    selection, test = selection_and_test(tmp_path / "x.npz", n_selection=4, n_test=3)
    assert torch.equal(selection, pool[:4]) and torch.equal(test, pool[4:7])
    selection, test = selection_and_test(tmp_path / "x.npz", n_selection=8, n_test=5)
    assert torch.equal(test, pool[8:])  # only what is left after the selection images
    with pytest.raises(ValueError, match="no test images are left"):
        selection_and_test(tmp_path / "x.npz", n_selection=10)
    with pytest.raises(ValueError, match="at least one"):
        selection_and_test(tmp_path / "x.npz", n_test=0)


def test_two_splits(tmp_path):
    np.savez(tmp_path / "x.npz", a=_images(6, 0), b=_images(6, 1))
    selection, test = selection_and_test(
        tmp_path / "x.npz", selection_split="a", test_split="b", n_selection=5, n_test=2
    )
    assert torch.equal(selection, dpddpm.load_images(tmp_path / "x.npz", split="a")[:5])
    assert torch.equal(test, dpddpm.load_images(tmp_path / "x.npz", split="b")[:2])


def test_cifar10_defaults_to_train_and_test(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batch = {b"data": np.random.default_rng(k).integers(0, 256, (2, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch))
    selection, test = selection_and_test(folder, n_selection=3, n_test=2)
    assert torch.equal(selection, dpddpm.load_images(folder, split="train", limit=3))
    assert torch.equal(test, dpddpm.load_images(folder, split="test"))


def test_digits_by_default():
    selection, test = selection_and_test(n_selection=5, n_test=300)
    assert torch.equal(selection, dpddpm.digits_split("selection")[:5])
    assert torch.equal(test, dpddpm.digits_split("test"))


def test_smallest_k_within():
    assert smallest_k_within([2, 4, 8], [5.0, 1.25, 1.1], 1.0, 0.25) == 4
    assert smallest_k_within([2, 4], [5.0, 3.0], 1.0, 0.1) is None


def test_protocol_seeds_batch_sizes_and_summary(tmp_path, monkeypatch):
    model, selection, test = tiny_model(T=12), discrete_data(6, seed=1), discrete_data(5, seed=2)
    monkeypatch.chdir(tmp_path)  # a file written without out_dir (e.g. a relative costs.npz) would land here
    res = reproduce(model, selection, test, steps=[2, 4], batch_size=64, test_batch_size=5, seed=3, progress=False)
    assert not list(tmp_path.iterdir())  # no out_dir: nothing written
    assert (res.seed, res.test_seed, res.test_batch_size) == (3, 4, 5)
    costs = dpddpm.cost_matrix(model, selection, batch_size=64, seed=3, progress=False)
    for row in res.rows:
        for kind, figures in row.schedules().items():  # every test ELBO: seed + 1, test_batch_size
            assert kind in ("dp", "even", "quadratic")
            want = dpddpm.elbo(model, test, figures.schedule, batch_size=5, seed=4)
            assert figures.test_bpd == want.bpd and figures.test_stderr == want.stderr
            assert figures.selection_bpd == pytest.approx(dpddpm.schedule_bpd(costs, figures.schedule))
    full = dpddpm.elbo(model, test, np.arange(12, 0, -1), batch_size=5, seed=4)
    assert res.full.test_bpd == full.bpd and res.full.test_source == "fresh"
    w = res.within_gap
    best = dpddpm.optimal_schedules(costs, 4)
    assert w.gap_bpd == 0.1 and w.selection_any_K == smallest_k_within(
        range(2, 5), best.bpd_all(), res.full.selection_bpd, 0.1
    )
    assert w.test_listed_K == smallest_k_within([2, 4], [r.dp.test_bpd for r in res.rows], full.bpd, 0.1)


def test_given_full_chain_and_skipped_full_chain(tmp_path):
    model, selection, test = tiny_model(T=12), discrete_data(6, seed=1), discrete_data(5, seed=2)
    res = reproduce(model, selection, test, tmp_path, steps=[3], full_test={"bpd": 1.5, "stderr": 0.25}, progress=False)
    assert res.full.test_bpd == 1.5 and res.full.test_source == "given"
    assert "given" in (tmp_path / "results.md").read_text()
    skipped = reproduce(model, selection, test, steps=[3], skip_full=True, progress=False)
    assert skipped.full is None and skipped.within_gap is None
    assert skipped["full"] is None and "full_elbo_s" not in skipped["timing"]


def test_analytic_variances_and_sample_scores_in_the_pipeline(tmp_path):
    """The analytic DP is fitted on the selection images only: other test images change its test figures and
    nothing upstream (variances, schedules); every schedule of K <= sample_max_steps gets per-seed scores."""
    model, selection = tiny_model(T=12), discrete_data(10, seed=1)
    test_a = discrete_data(8, seed=2)
    test_b = discrete_data(8, seed=7)
    seen: list[tuple[int, ...]] = []

    def score(images: torch.Tensor) -> dict[str, float]:
        seen.append(tuple(images.shape))
        return {"spread": float(images.std()), "mean": float(images.mean())}

    options = dict(steps=[3, 5], analytic=True, sample_score=score, sample_max_steps=3, sample_seeds=(0, 1, 2))
    a = reproduce(model, selection, test_a, tmp_path, progress=False, **options)
    b = reproduce(model, selection, test_b, progress=False, **options)
    assert a["analytic_variances"] == b["analytic_variances"]  # the same frozen variances
    assert a["analytic_variances"]["fitted_on"]["N"] == 10
    for ra, rb in zip(a.rows, b.rows):
        assert ra.dp_analytic.schedule == rb.dp_analytic.schedule
        assert ra.dp_analytic.selection_bpd == rb.dp_analytic.selection_bpd
        assert ra.dp_analytic.test_bpd != rb.dp_analytic.test_bpd
    # the fitted variances come back typed: the analytic test figures are those of the model frozen with them,
    # and their difference to the DP is paired
    costs = dpddpm.cost_matrix(model, selection, progress=False)
    variances = dpddpm.fit_analytic_variances(model, selection, costs)
    assert isinstance(a.analytic_variances, AnalyticVariances)
    assert a.analytic_variances.fingerprint() == variances.fingerprint()
    np.testing.assert_array_equal(a.analytic_variances.mse, variances.mse)
    frozen = dpddpm.with_analytic_variances(model, a.analytic_variances)
    row = a.rows[0]
    want = dpddpm.elbo(frozen, test_a, row.dp_analytic.schedule, seed=1)
    dp = dpddpm.elbo(model, test_a, row.dp.schedule, seed=1)
    assert row.dp_analytic.test_bpd == pytest.approx(want.bpd, rel=1e-9)
    assert row.dp_analytic.minus_dp.test_stderr == pytest.approx(want.paired_stderr(dp), rel=1e-6)
    assert a.full.analytic.test_bpd == pytest.approx(
        dpddpm.elbo(frozen, test_a, np.arange(12, 0, -1), seed=1).bpd, rel=1e-9
    )
    # samples: K = 3 only; 4 schedules ancestral + 3 DDIM, 3 seeds each, as many samples as test images
    assert row.dp.samples is not None and a.rows[1].dp.samples is None
    assert set(row.dp_analytic.samples) == {"ancestral"}
    assert set(row.even.samples) == {"ancestral", "ddim"}
    assert len(seen) == 2 * 7 * 3 and set(seen) == {(8, 1, 4, 4)}
    assert (a.samples.n, a.samples.seeds) == (8, (0, 1, 2))
    s = a["rows"][0]["quadratic"]["samples"]["ddim"]
    assert s["spread"] == pytest.approx(np.mean(s["per_seed"]["spread"]))
    assert s["spread_stderr"] == pytest.approx(np.std(s["per_seed"]["spread"], ddof=1) / np.sqrt(3))
    diff = np.subtract(s["per_seed"]["spread"], row.dp.samples["ddim"].per_seed["spread"])
    assert s["spread_minus_dp"] == pytest.approx(diff.mean())  # paired over seeds: the same seeds for all
    assert s["spread_minus_dp_stderr"] == pytest.approx(diff.std(ddof=1) / np.sqrt(3))
    assert "spread_minus_dp" in a["rows"][0]["dp_analytic"]["samples"]["ancestral"]
    assert "spread_minus_dp" not in a["rows"][0]["dp"]["samples"]["ancestral"]
    text = (tmp_path / "results.md").read_text()
    assert "analytic − DP" in text and "ancestral spread" in text and "DDIM spread" in text
    _check_results_file(a, tmp_path)


def _check_results_file(res: ReproduceResults, out_dir) -> None:
    """results.json is ``res.to_dict()`` (NaN as null), in the same key order, with no private entry."""
    written = (out_dir / "results.json").read_text()
    assert json.loads(written) == json_safe(res.to_dict())
    assert json.dumps(json.loads(written)) == json.dumps(json_safe(res.to_dict()))  # the same order too
    assert "_dp_estimates" not in written and "estimates" not in written
    assert res.rows[0].dp.estimates is not None  # kept in the typed results for paired differences


def test_results_keys_and_options(tmp_path):
    """The results file keeps its layout; options go in as keywords or as a ReproduceOptions, not both."""
    model, selection, test = tiny_model(T=12), discrete_data(6, seed=1), discrete_data(5, seed=2)
    opts = ReproduceOptions(steps=[2, 4], batch_size=64, seed=3, progress=False, name="tiny")
    res = reproduce(model, selection, test, tmp_path, options=opts)
    assert isinstance(res, ReproduceResults) and res.analytic_variances is None and res.samples is None
    d = res.to_dict()
    assert list(d) == [
        "dpddpm_version",
        "model",
        "T",
        "variance",
        "device",
        "torch_threads",
        "n_selection",
        "n_test",
        "seed",
        "test_seed",
        "batch_size",
        "test_batch_size",
        "rows",
        "full",
        "within_gap",
        "timing",
    ]
    assert list(d["rows"][0]) == ["K", "dp", "even", "quadratic"]
    assert list(d["rows"][0]["dp"]) == ["schedule", "test_bpd", "test_stderr", "selection_bpd", "selection_stderr"]
    assert list(d["rows"][0]["even"])[5:] == [
        "test_minus_dp",
        "test_minus_dp_stderr",
        "selection_minus_dp",
        "selection_minus_dp_stderr",
    ]
    assert list(d["full"]) == ["K", "test_bpd", "test_stderr", "test_source", "selection_bpd", "selection_stderr"]
    assert list(d["timing"]) == [
        "cost_matrix_s",
        "cost_matrix_network_s",
        "cost_matrix_network_calls",
        "cost_matrix_ratio",
        "dp_s",
        "elbo_s",
        "full_elbo_s",
        "total_s",
        "total_network_s",
        "total_ratio",
    ]
    assert d["timing"]["total_ratio"] == res.timing.total_s / res.timing.total_network_s
    _check_results_file(res, tmp_path)
    same = reproduce(model, selection, test, steps=[2, 4], batch_size=64, seed=3, progress=False, name="tiny")
    assert [r.dp.schedule for r in same.rows] == [r.dp.schedule for r in res.rows]
    assert same.rows[1].even.test_bpd == res.rows[1].even.test_bpd
    with pytest.raises(TypeError, match="not both"):
        reproduce(model, selection, test, options=opts, seed=4)
    with pytest.raises(TypeError, match="stpes"):
        reproduce(model, selection, test, stpes=[2])
