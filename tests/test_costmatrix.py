"""The CostMatrix: run info (typed, saved, compared), rows, files, merging shards, and computing vs checkpointing."""

import json
import pickle

import numpy as np
import pytest
from toy_models import assert_costs_close, discrete_data, tiny_model

import dpddpm
from dpddpm.checkpoint import cost_matrix_resumable
from dpddpm.costs import CostRun
from dpddpm.runinfo import MODEL_FIELDS, RUN_FIELDS, RunInfo


# ------------------------------------------------------------------------------------------------- RunInfo
def test_run_info_round_trips_through_json_with_its_types_and_extra_keys():
    info = RunInfo(
        T=np.int64(6),
        variance="learned_range",
        clip_denoised=np.bool_(True),
        N=4,
        data_shards=["a", "b"],
        extra={"user": {"note": [1, None]}},
    )
    assert info.T == 6 and type(info.T) is int and info.clip_denoised is True and info.data_shards == ("a", "b")
    back = RunInfo.from_json(info.to_json())
    assert back == info
    assert json.loads(info.to_json(format_version=2))["format_version"] == 2
    assert info.as_dict() == {
        "T": 6,
        "variance": "learned_range",
        "clip_denoised": True,
        "N": 4,
        "data_shards": ["a", "b"],
        "user": {"note": [1, None]},
    }
    assert hash(back) == hash(info)
    assert pickle.loads(pickle.dumps(info)) == info


def test_run_info_differences_and_missing_fields():
    a = RunInfo(T=6, variance="learned_range", seed=0, autocast=None)
    b = a.replace(seed=1, autocast="bf16")
    assert a.differences(b) == ["seed", "autocast"]
    assert a.differences(b, MODEL_FIELDS) == ["autocast"]  # "not recorded" differs from a value
    assert a.differences(a.replace(extra={"user": 1})) == []  # extra keys are never compared
    assert a.missing(("T", "seed", "N")) == ["N"]
    assert set(MODEL_FIELDS) < set(RUN_FIELDS)
    assert "seed: 0 in x, 1 in y" in a.describe(b, ["seed"], "x", "y")


def test_run_info_refuses_extra_keys_that_are_fields():
    with pytest.raises(ValueError, match="fields"):
        RunInfo(extra={"seed": 1})
    assert RunInfo.from_dict({"seed": 1, "other": 2}) == RunInfo(seed=1, extra={"other": 2})


# --------------------------------------------------------------------------------------- the matrix's info
def _hand_built(T=4, **kw):
    kl = np.ones((T + 1, T + 1))
    return dpddpm.CostMatrix(kl=kl, decoder=np.ones(T + 1), prior=np.ones(T + 1), **kw)


def test_hand_built_matrices_record_only_their_T():
    costs = _hand_built()
    assert costs.info == RunInfo(T=4) and dict(costs.meta) == {"T": 4}
    costs.meta = {"N": 3, "source": "closed form"}  # assigning a dict replaces the info
    assert costs.info == RunInfo(T=4, N=3, extra={"source": "closed form"})
    with pytest.raises(TypeError):
        costs.meta["N"] = 5  # a read-only view: change the info instead
    costs.info = costs.info.replace(N=5)
    assert costs.meta["N"] == 5
    with pytest.raises(ValueError, match="T = 7"):
        costs.info = RunInfo(T=7)
    with pytest.raises(TypeError, match="not both"):
        _hand_built(info=RunInfo(), meta={})


def test_files_load_unrecorded_fields_as_none(tmp_path):
    """A cost file's run info is the JSON string in its "meta" entry; fields it lacks load as None."""
    costs = dpddpm.cost_matrix(tiny_model(T=4), discrete_data(3), progress=False, rows=[4, 3])
    path = costs.save(tmp_path / "c.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    assert meta["format_version"] == 3 and meta["seed"] == 0 and meta["N"] == 3
    assert dpddpm.CostMatrix.load(path).info == costs.info
    arrays["meta"] = np.array(json.dumps({"T": 4, "format_version": 3, "N": 3}))
    np.savez(tmp_path / "old.npz", **arrays)
    old = dpddpm.CostMatrix.load(tmp_path / "old.npz")
    assert old.info == RunInfo(T=4, N=3) and old.info.weights_fingerprint is None


def _format2_arrays(costs: dpddpm.CostMatrix) -> dict[str, np.ndarray]:
    """What dpddpm 0.2 wrote: the computed rows' entries as float64 (written here by hand, not by the package)."""
    rows = np.flatnonzero(costs.rows_done[2:]) + 2
    arrays = {
        "rows": rows,
        "kl_packed": np.concatenate([costs.kl[t, 1:t] for t in rows]),
        "stderr_packed": np.concatenate([costs.stderr[t, 1:t] for t in rows]),
        "decoder": costs.decoder,
        "prior": costs.prior,
        "counts": costs.counts,
        "decoder_stderr": costs.decoder_stderr,
        "prior_stderr": costs.prior_stderr,
        "mse": costs.mse,
        "mse_stderr": costs.mse_stderr,
    }
    arrays["meta"] = np.array(costs.info.to_json(format_version=2))
    return arrays


def test_files_of_the_second_format_still_load_exactly(tmp_path):
    costs = dpddpm.cost_matrix(tiny_model(T=7), discrete_data(5), progress=False, rows=[7, 5, 4, 1])
    np.savez(tmp_path / "v2.npz", **_format2_arrays(costs))
    back = dpddpm.CostMatrix.load(tmp_path / "v2.npz")
    for name in ("kl", "stderr", "decoder", "prior", "counts", "mse", "mse_stderr", "decoder_stderr"):
        np.testing.assert_array_equal(getattr(back, name), getattr(costs, name))
    assert back.info == costs.info


def test_the_third_format_stores_costs_exactly_and_standard_errors_to_float32(tmp_path):
    """Format 3 keeps every cost and vector bit for bit and the edges' standard errors (error bars) to float32's
    7 digits; on a matrix that is smooth along its rows it is half the size of format 2 or less."""
    T = 600
    t = np.arange(T + 1, dtype=np.float64)[:, None]
    s = np.arange(T + 1, dtype=np.float64)[None, :]
    kl = np.where((s >= 1) & (s < t), np.log2(1 + (t - s) / (s + 3.0)) / 2, np.nan)
    costs = dpddpm.CostMatrix(
        kl=kl, decoder=np.linspace(1, 2, T + 1), prior=np.ones(T + 1), stderr=kl / 50, counts=np.r_[0, [16] * T]
    )
    path = costs.save(tmp_path / "v3.npz")
    back = dpddpm.CostMatrix.load(path)
    np.testing.assert_array_equal(back.kl, costs.kl)
    np.testing.assert_array_equal(back.decoder, costs.decoder)
    np.testing.assert_array_equal(back.stderr, costs.stderr.astype(np.float32).astype(np.float64))
    np.savez(tmp_path / "v2.npz", **_format2_arrays(costs))
    assert path.stat().st_size <= 0.5 * (tmp_path / "v2.npz").stat().st_size


# ------------------------------------------------------------------------------------------------ rows
def test_rows_are_set_read_and_copied_in_place():
    T = 5
    costs = dpddpm.CostMatrix.empty(np.r_[np.nan, np.ones(T)], np.r_[np.nan, np.zeros(T)], RunInfo(T=T))
    assert not costs.rows_done.any()
    costs.set_row(4, np.arange(3.0), np.full(3, 0.1), 7)
    costs.set_row(1, np.arange(4.0), None, 7)
    mean, se, count = costs.row(4)
    np.testing.assert_array_equal(mean, [0, 1, 2])
    assert count == 7 and costs.rows_done.tolist() == [False, True, False, False, True, False]
    assert np.isnan(costs.row(1)[1]).all() and costs.decoder[2:].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="t = 3"):
        costs.set_row(3, np.array([1.0, np.inf]), None, 7)
    other = dpddpm.CostMatrix.empty(costs.prior, costs.prior_stderr, RunInfo(T=T))
    other.copy_rows(costs)
    np.testing.assert_array_equal(other.kl, costs.kl)
    np.testing.assert_array_equal(other.counts, costs.counts)


# ------------------------------------------------------------------------- computing apart from saving
def test_the_row_iterator_gives_the_matrix_and_skips_rows():
    model, data = tiny_model(T=6), discrete_data(5)
    run = CostRun(model, data, batch_size=8, seed=3)
    assert run.info == dpddpm.cost_matrix(model, data, progress=False, seed=3).info
    costs = run.empty()
    skip = np.zeros(7, bool)
    skip[[2, 5]] = True
    rows = list(run.finished_rows(skip=skip, progress=False))
    assert [r.t for r in rows] == [6, 4, 3, 1] and all(r.count == 5 for r in rows)
    for row in rows:
        costs.set_row(*row)
    whole = dpddpm.cost_matrix(model, data, batch_size=8, progress=False, seed=3)
    done = costs.rows_done
    np.testing.assert_allclose(costs.kl[done], whole.kl[done], rtol=1e-6, equal_nan=True)


def test_the_checkpoint_layer_equals_cost_matrix_with_a_checkpoint(tmp_path):
    model, data = tiny_model(T=6), discrete_data(5)
    plain = dpddpm.cost_matrix(model, data, progress=False, seed=1)
    layered = cost_matrix_resumable(model, data, tmp_path / "a", progress=False, seed=1)
    assert_costs_close(layered, plain)
    assert layered.info == plain.info
    assert_costs_close(dpddpm.CostMatrix.load(tmp_path / "a.npz"), plain)
    with pytest.raises(FileExistsError, match="resume=True"):
        cost_matrix_resumable(model, data, tmp_path / "a.npz", progress=False, seed=1)


def test_data_sharding_merges_means_and_standard_errors():
    rng = np.random.default_rng(0)
    T = 5
    samples = rng.normal(size=(40, T + 1, T + 1))
    tri = np.tril(np.ones((T + 1, T + 1), bool), -1)
    tri[:, 0] = False

    def summarize(x, data_id):
        kl = np.where(tri, x.mean(0), np.nan)
        se = np.where(tri, x.std(0, ddof=1) / np.sqrt(len(x)), np.nan)
        counts = np.r_[0, np.full(T, len(x))]
        return dpddpm.CostMatrix(
            kl=kl,
            decoder=np.r_[np.nan, np.nan, np.ones(T - 1)],
            prior=np.r_[np.nan, np.ones(T)],
            stderr=se,
            decoder_stderr=np.r_[np.nan, np.nan, np.zeros(T - 1)],
            counts=counts,
            meta={"data_fingerprint": data_id, "N": len(x)},
        )

    merged = dpddpm.merge_costs([summarize(samples[:13], "a"), summarize(samples[13:], "b")])
    whole = summarize(samples, "ab")
    np.testing.assert_allclose(merged.kl, whole.kl, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(merged.stderr, whole.stderr, rtol=1e-10, equal_nan=True)
    assert merged.meta["N"] == 40 and merged.info.data_fingerprint is None and merged.info.data_shards == ("a", "b")


def test_save_and_load_roundtrip(tmp_path):
    model = tiny_model(T=8)
    costs = dpddpm.cost_matrix(model, discrete_data(9), progress=False)
    path = costs.save(tmp_path / "costs.npz")
    back = dpddpm.CostMatrix.load(path, expect={"T": 8, "variance": "learned_range"})
    for name in ("kl", "decoder", "prior", "decoder_stderr", "prior_stderr", "counts", "mse", "mse_stderr"):
        np.testing.assert_array_equal(getattr(back, name), getattr(costs, name))
    np.testing.assert_array_equal(back.stderr, costs.stderr.astype(np.float32).astype(np.float64))  # error bars
    assert back.meta["N"] == 9
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="variance"):
        dpddpm.CostMatrix.load(path, expect={"variance": "fixed_small"})
    with pytest.raises(ValueError, match="T"):
        dpddpm.CostMatrix.load(path, expect={"T": 9})


def test_data_shards_pool_the_prior_and_the_counts():
    """Shards of data: the prior (exact given the data) pools to the full data's prior, counts add up."""
    model = tiny_model(T=6)
    data = discrete_data(30, seed=4)
    halves = [dpddpm.cost_matrix(model, d, progress=False, seed=s) for d, s in ((data[:12], 0), (data[12:], 1))]
    merged = dpddpm.merge_costs(halves)
    full = dpddpm.cost_matrix(model, data, progress=False)
    np.testing.assert_allclose(merged.prior, full.prior, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(merged.prior_stderr, full.prior_stderr, rtol=1e-9, equal_nan=True)
    assert merged.counts[1:].tolist() == [30] * 6 and merged.meta["N"] == 30


def test_standard_errors_that_float32_cannot_hold_are_stored_exactly(tmp_path):
    """An error bar beyond float32's range (or below its normal numbers) keeps float64: never inf, never 0."""
    from dpddpm.floatplanes import fits_float32, from_planes, to_planes

    values = np.array([1e-40, 0.5, np.nan, 0.0, 3e38])
    assert not fits_float32(values) and fits_float32(values[1:])
    np.testing.assert_array_equal(from_planes(to_planes(values, np.float64)), values)
    kl = np.full((4, 4), np.nan)
    kl[np.tril_indices(4, -1)] = 1.0
    stderr = kl * 1e-40
    costs = dpddpm.CostMatrix(kl=kl, decoder=np.ones(4), prior=np.ones(4), stderr=stderr, counts=np.r_[0, 3, 3, 3])
    back = dpddpm.CostMatrix.load(costs.save(tmp_path / "tiny.npz"))
    np.testing.assert_array_equal(back.stderr, costs.stderr)
