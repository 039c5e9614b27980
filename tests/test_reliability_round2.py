"""Issue 18, "Nothing lost, nothing mixed, round two": one test per numbered case, each of which failed before the fix.

Data loss (1-6), silent wrong answers (7-11), security (12). Tiny models, in-process, a few seconds in all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from toy_models import discrete_data, tiny_model

import dpddpm
from dpddpm import cli
from dpddpm.analytic import AnalyticVariances, analytic_costs, fit_analytic_variances
from dpddpm.checkpoint import cost_matrix_resumable
from dpddpm.costs import CostRun
from dpddpm.files import claim_output
from dpddpm.runinfo import RunInfo

T = 6


@pytest.fixture
def model():
    return tiny_model(T=T)


@pytest.fixture
def data():
    return discrete_data(5)


def _shards(model, data, tmp_path):
    """The two interleaved row shards of one run, saved as s0.npz and s1.npz."""
    paths = []
    for i in range(2):
        part = dpddpm.cost_matrix(model, data, progress=False, rows=[t for t in range(1, T + 1) if t % 2 == i])
        paths.append(part.save(tmp_path / f"s{i}.npz"))
    return paths


def _rewrite_meta(path, **changes):
    """Rewrite a cost file's meta JSON with some fields changed (a hand-edited or damaged file)."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    meta.update(changes)
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


# ------------------------------------------------------------------------------------------------ data loss


def test_1_partial_merge_with_out_forgotten_keeps_the_shard(model, data, tmp_path, capsys):
    s0, s1 = _shards(model, data, tmp_path)
    copy = tmp_path / "s0_copy.npz"
    shutil.copy(s0, copy)
    before = copy.read_bytes()
    assert cli.main(["merge", "--allow-partial", str(copy), str(s1)]) == 2
    err = capsys.readouterr().err
    assert "would lose them" in err and "forget the OUT" in err
    assert copy.read_bytes() == before
    # checking a sharded run's progress: the same partial merge, again and again, as the shards gain rows
    progress = str(tmp_path / "progress.npz")
    assert cli.main(["merge", "--allow-partial", progress, str(s1)]) == 0
    assert cli.main(["merge", "--allow-partial", progress, str(s1)]) == 0
    assert cli.main(["merge", "--allow-partial", progress, str(s0), str(s1)]) == 0
    assert dpddpm.CostMatrix.load(progress).is_complete


def test_2_merge_takes_the_output_lock(model, data, tmp_path, capsys):
    s0, s1 = _shards(model, data, tmp_path)
    out = tmp_path / "live.npz"
    with claim_output(out):  # what a live `costs --out live.npz` holds
        assert cli.main(["merge", str(out), str(s0), str(s1)]) == 2
    assert "another run" in capsys.readouterr().err and not out.exists()
    assert cli.main(["merge", str(out), str(s0), str(s1)]) == 0


def test_3_an_output_name_with_glob_characters_spares_other_runs_temp_files(tmp_path):
    live_temp = tmp_path / ".c1.npz.0123abcd.tmp"  # a temp file of a running --out c1.npz
    live_temp.write_bytes(b"rows")
    own_stale = tmp_path / ".c[1].npz.89abcdef.tmp"  # one of our own, left by a killed run
    own_stale.write_bytes(b"old")
    with claim_output(tmp_path / "c[1].npz"):
        pass
    assert live_temp.read_bytes() == b"rows"
    assert not own_stale.exists()


def test_4_a_second_sigterm_during_the_interruption_save_is_ignored(model, data, tmp_path, monkeypatch):
    rows = CostRun.finished_rows

    def two_rows_then_sigterm(self, skip=None, progress=True):
        for i, row in enumerate(rows(self, skip, progress=False)):
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # the first one: raises Terminated in the row loop
            yield row

    save = dpddpm.CostMatrix.save

    def save_interrupted(self, path):
        os.kill(os.getpid(), signal.SIGTERM)  # the second one arrives while the rows are being saved
        return save(self, path)

    monkeypatch.setattr(CostRun, "finished_rows", two_rows_then_sigterm)
    monkeypatch.setattr(dpddpm.CostMatrix, "save", save_interrupted)
    out = tmp_path / "c.npz"
    with pytest.raises(KeyboardInterrupt):
        cost_matrix_resumable(model, data, out, progress=False)
    monkeypatch.undo()
    assert dpddpm.CostMatrix.load(out).rows_done.sum() == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_5_merge_keeps_mse_row_by_row_when_a_part_lacks_it(model, data, tmp_path, capsys):
    a = dpddpm.cost_matrix(model, data, progress=False, rows=[1, 3, 5])
    b = dpddpm.cost_matrix(model, data, progress=False, rows=[2, 4, 6])
    b.mse = b.mse_stderr = None  # a file from before mse existed
    merged = dpddpm.merge_costs([a, b])
    assert merged.mse is not None
    np.testing.assert_array_equal(merged.mse[[1, 3, 5]], a.mse[[1, 3, 5]])
    assert np.isnan(merged.mse[[2, 4, 6]]).all()
    pa, pb = a.save(tmp_path / "a.npz"), b.save(tmp_path / "b.npz")
    assert cli.main(["merge", str(tmp_path / "m.npz"), str(pa), str(pb)]) == 0
    assert "2, 4, 6" in capsys.readouterr().out.replace("[", "").replace("]", "")
    np.testing.assert_array_equal(dpddpm.CostMatrix.load(tmp_path / "m.npz").mse[[1, 3, 5]], a.mse[[1, 3, 5]])


@pytest.mark.parametrize("call", ["elbo", "cost_matrix", "sample"])
def test_6_device_meta_leaves_the_callers_model_untouched(model, data, call):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="meta"):
        if call == "elbo":
            dpddpm.elbo(model, data, [T, 3, 1], device="meta")
        elif call == "cost_matrix":
            dpddpm.cost_matrix(model, data, progress=False, device="meta")
        else:
            dpddpm.sample(model, [T, 1], 2, device="meta")
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())


def test_6_a_model_that_must_move_is_copied_not_moved(model, data, monkeypatch):
    """Where the model is not on the device asked for, the computation runs on a copy (forced here on the CPU)."""
    params = [p.clone() for p in model.parameters()]
    reference = dpddpm.elbo(model, data, [T, 3, 1], seed=4)
    monkeypatch.setattr(dpddpm.model, "_on", lambda tensor, device: False)  # as if every tensor were elsewhere
    copy = dpddpm.model.model_on(model, torch.device("cpu"))
    assert copy is not model and all(a is not b for a, b in zip(copy.parameters(), model.parameters()))
    moved = dpddpm.elbo(model, data, [T, 3, 1], seed=4)
    np.testing.assert_allclose(moved.per_sample, reference.per_sample, rtol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), params))


# ------------------------------------------------------------------------------------- silent wrong answers


@pytest.mark.parametrize("bad", [-1, 0, 2.5, True])
def test_7_one_batch_size_check_for_every_entry_point(model, data, bad):
    costs = dpddpm.cost_matrix(model, data, progress=False)
    calls = [
        lambda: fit_analytic_variances(model, data, costs, batch_size=bad),
        lambda: dpddpm.elbo(model, data, [T, 1], batch_size=bad),
        lambda: dpddpm.in_sample_elbo(model, data, costs, [T, 1], batch_size=bad),
        lambda: dpddpm.cost_matrix(model, data, progress=False, batch_size=bad),
    ]
    for call in calls:
        with pytest.raises((ValueError, TypeError), match="batch_size"):
            call()


def test_7_fit_variances_batch_size_on_the_command_line(capsys):
    for bad in ("-1", "0"):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["fit-variances", "--pretrained", "x", "--digits-split", "selection", "--costs", "c.npz",
                      "--out", "v.json", "--batch-size", bad])  # fmt: skip
        assert exit_.value.code == 2 and "batch_size must be >= 1" in capsys.readouterr().err


def test_8_merge_refuses_row_shards_of_other_seeds_or_noise_devices(model, data):
    a = dpddpm.cost_matrix(model, data, progress=False, rows=[1, 3, 5], seed=0)
    with pytest.raises(ValueError, match="different seed"):
        dpddpm.merge_costs([a, dpddpm.cost_matrix(model, data, progress=False, rows=[2, 4, 6], seed=1)])
    b = dpddpm.cost_matrix(model, data, progress=False, rows=[2, 4, 6], seed=0)
    b.info = b.info.replace(noise_device="cuda")
    with pytest.raises(ValueError, match="different noise_device"):
        dpddpm.merge_costs([a, b])
    # an older part that records no seed: the merge goes through, but the merged file cannot be replayed
    b.info = b.info.replace(noise_device="cpu", seed=None)
    merged = dpddpm.merge_costs([a, b])
    assert merged.info.seed is None
    with pytest.raises(ValueError, match="records no seed"):
        dpddpm.in_sample_elbo(model, data, merged, [T, 3, 1])


def test_9_overlapping_data_shards_are_refused(model):
    data = discrete_data(4)
    first4 = dpddpm.cost_matrix(model, data, progress=False)
    first2 = dpddpm.cost_matrix(model, data[:2], progress=False)
    with pytest.raises(ValueError, match="shares 2 image"):
        dpddpm.merge_costs([first4, first2])
    disjoint = dpddpm.merge_costs([dpddpm.cost_matrix(model, data[2:], progress=False), first2])
    assert disjoint.info.N == 4 and len(disjoint.image_hashes) == 4
    with pytest.raises(ValueError, match="shares 2 image"):  # the merged file still knows its images
        dpddpm.merge_costs([disjoint, dpddpm.cost_matrix(model, data[1:3], progress=False)])


def test_10_fresh_elbo_does_not_depend_on_the_batch_size(model):
    data = discrete_data(20, seed=3)
    sched = dpddpm.even_schedule(T, 4)
    small = dpddpm.elbo(model, data, sched, batch_size=7, seed=1)
    large = dpddpm.elbo(model, data, sched, batch_size=256, seed=1)
    np.testing.assert_allclose(small.per_sample, large.per_sample, rtol=1e-6)
    assert abs(small.bpd - large.bpd) < 1e-6 * abs(large.bpd)
    assert abs(dpddpm.elbo(model, data, sched, seed=2).bpd - large.bpd) > 1e-6  # the seed does matter
    many = discrete_data(dpddpm.evaluate.NOISE_BLOCK + 30, seed=3)  # two noise blocks
    a, b = (dpddpm.elbo(model, many, sched, batch_size=bs, seed=1) for bs in (100, 2048))
    np.testing.assert_allclose(a.per_sample, b.per_sample, rtol=1e-6)
    # the first images of a longer data set get the same noise (torch's CPU normal sampler fills whole chunks
    # of 16 values, and every draw here is a multiple of 16 long)
    first = dpddpm.elbo(model, many[:20], sched, batch_size=7, seed=1)
    np.testing.assert_allclose(first.per_sample, a.per_sample[:20], rtol=1e-6)


def test_11_analytic_costs_refuse_another_models_matrix(model, data):
    costs = dpddpm.cost_matrix(model, data, progress=False)
    variances = fit_analytic_variances(model, data, costs)
    other = tiny_model(T=T)
    with torch.no_grad():
        next(other.net.parameters()).mul_(2.0)
    with pytest.raises(ValueError, match="another model"):
        analytic_costs(costs, variances, other, data)


def test_11_variances_files_are_read_typed(model, data, tmp_path):
    costs = dpddpm.cost_matrix(model, data, progress=False)
    path = fit_analytic_variances(model, data, costs).save(tmp_path / "v.json")
    good = json.loads(path.read_text())
    for change in ({"info": {}}, {"decoder_log_variance": 1e6}, {"decoder_log_variance": "0.1"}):
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=str(path)):
            AnalyticVariances.load(path)


def test_11_cost_file_meta_is_read_typed(model, data, tmp_path):
    path = dpddpm.cost_matrix(model, data, progress=False).save(tmp_path / "c.npz")
    for change in ({"clip_denoised": "false"}, {"N": 2.7}, {"seed": "0"}, {"T": 3}):
        shutil.copy(path, tmp_path / "bad.npz")
        _rewrite_meta(tmp_path / "bad.npz", **change)
        with pytest.raises(ValueError, match="bad.npz"):
            dpddpm.CostMatrix.load(tmp_path / "bad.npz")


def test_11_run_info_refuses_float_counts_and_string_bools():
    for bad in ({"N": 2.7}, {"N": 3.0}, {"clip_denoised": "false"}, {"num_bins": True}, {"T": "4"}):
        with pytest.raises((TypeError, ValueError)):
            RunInfo(**bad)
    assert RunInfo(N=np.int64(3), clip_denoised=np.bool_(False)).N == 3


# ------------------------------------------------------------------------------------------------- security


def test_12_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / ".c.npz.lock").symlink_to(target)
    with pytest.raises(FileExistsError, match="not a regular file"):
        with claim_output(tmp_path / "c.npz"):
            pass
    assert target.read_text() == "keep me" and (tmp_path / ".c.npz.lock").is_symlink()
    # a link planted as a temp file is neither followed nor removed
    (tmp_path / ".c.npz.lock").unlink()
    link = tmp_path / ".c.npz.0123abcd.tmp"
    link.symlink_to(target)
    with claim_output(tmp_path / "c.npz"):
        pass
    assert link.is_symlink() and target.read_text() == "keep me"
