"""Resumable cost-matrix runs: interrupt, check the partial file, resume, compare to an uninterrupted run."""

import numpy as np
import pytest
import torch
from toy_models import assert_costs_close, discrete_data, tiny_model

import dpddpm


class _Stop:
    """A forward hook that raises KeyboardInterrupt on the n-th network call."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, module, args, output):
        self.calls += 1
        if self.calls >= self.n:
            raise KeyboardInterrupt


@pytest.mark.parametrize("variance", ["learned_range", "fixed_small"])
def test_interrupt_and_resume_equals_full_run(tmp_path, variance):
    model = tiny_model(T=12, variance=variance)
    data = discrete_data(10)
    full = dpddpm.cost_matrix(model, data, batch_size=7, progress=False, seed=5)

    ckpt = tmp_path / "costs.npz"
    hook = model.net.register_forward_hook(_Stop(6))
    with pytest.raises(KeyboardInterrupt):
        dpddpm.cost_matrix(model, data, batch_size=7, progress=False, seed=5, checkpoint=ckpt, save_every=0.0)
    hook.remove()
    partial = dpddpm.CostMatrix.load(ckpt)
    assert not partial.is_complete and partial.rows_done.any()
    done = partial.rows_done
    np.testing.assert_allclose(partial.kl[done], full.kl[done], rtol=1e-6, equal_nan=True)

    calls = []
    hook = model.net.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    resumed = dpddpm.cost_matrix(model, data, batch_size=7, progress=False, seed=5, checkpoint=ckpt, resume=True)
    hook.remove()
    assert sum(calls) == (~done[1:]).sum() * len(data)  # only the missing rows were computed
    assert_costs_close(resumed, full)
    assert_costs_close(dpddpm.CostMatrix.load(ckpt), full)


def test_existing_checkpoint_needs_resume(tmp_path):
    model, data = tiny_model(T=6), discrete_data(4)
    ckpt = tmp_path / "c.npz"
    dpddpm.cost_matrix(model, data, progress=False, checkpoint=ckpt)
    with pytest.raises(FileExistsError, match="resume=True"):
        dpddpm.cost_matrix(model, data, progress=False, checkpoint=ckpt)
    again = dpddpm.cost_matrix(model, data, progress=False, checkpoint=ckpt, resume=True)  # nothing left to do
    assert again.is_complete


@pytest.mark.parametrize("change", [{"seed": 1}, {"n": 5}])
def test_resume_checks_metadata(tmp_path, change):
    model = tiny_model(T=6)
    ckpt = tmp_path / "c.npz"
    dpddpm.cost_matrix(model, discrete_data(4), progress=False, checkpoint=ckpt)
    with pytest.raises(ValueError, match="cannot resume"):
        dpddpm.cost_matrix(
            model,
            discrete_data(change.get("n", 4)),
            progress=False,
            checkpoint=ckpt,
            resume=True,
            seed=change.get("seed", 0),
        )


def test_resume_checks_T(tmp_path):
    ckpt = tmp_path / "c.npz"
    dpddpm.cost_matrix(tiny_model(T=6), discrete_data(4), progress=False, checkpoint=ckpt)
    with pytest.raises(ValueError, match="T"):
        dpddpm.cost_matrix(tiny_model(T=7), discrete_data(4), progress=False, checkpoint=ckpt, resume=True)


def test_fp16_autocast_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        dpddpm.cost_matrix(tiny_model(T=4), discrete_data(2), progress=False, device="cpu", autocast="fp16")


def test_bf16_autocast_changes_the_costs_only_slightly():
    """bf16 network outputs perturb the costs at the percent level, never to NaN; costs stay float64."""
    model, data = tiny_model(T=8), discrete_data(16)
    exact = dpddpm.cost_matrix(model, data, progress=False)
    low = dpddpm.cost_matrix(model, data, progress=False, autocast="bf16")
    assert low.kl.dtype == np.float64 and low.is_complete
    tri = ~np.isnan(exact.kl)
    rel = np.abs(low.kl[tri] - exact.kl[tri]) / exact.kl[tri]
    assert 0 < rel.max() < 0.2


def test_a_network_that_overflows_under_autocast_gets_a_hint(monkeypatch):
    """Non-finite output under autocast is refused with advice that names autocast (fp16 did this on an H100)."""
    model, data = tiny_model(T=4), discrete_data(4)
    forward = model.net.forward
    monkeypatch.setattr(model.net, "forward", lambda x, t: forward(x, t) * float("inf"))
    with pytest.raises(FloatingPointError, match="autocast='bf16'.*run without autocast"):
        dpddpm.cost_matrix(model, data, progress=False, autocast="bf16")
    with pytest.raises(FloatingPointError, match="NaN/Inf") as plain:
        dpddpm.cost_matrix(model, data, progress=False)
    assert "autocast" not in str(plain.value)


def test_autocast_rejects_unknown():
    with pytest.raises(ValueError, match="autocast"):
        dpddpm.cost_matrix(tiny_model(T=4), discrete_data(2), progress=False, autocast="int8")


# ---------------------------------------------------------------- nothing mixed: resume checks fingerprints


def _checkpoint(tmp_path, model, data, **kw):
    ckpt = tmp_path / "c.npz"
    dpddpm.cost_matrix(model, data, progress=False, checkpoint=ckpt, rows=[6, 5], **kw)
    return ckpt


def test_resume_refuses_other_data_of_the_same_size(tmp_path):
    model = tiny_model(T=6)
    ckpt = _checkpoint(tmp_path, model, discrete_data(4, seed=0))
    with pytest.raises(ValueError, match="on other data.*data_fingerprint"):
        dpddpm.cost_matrix(model, discrete_data(4, seed=1), progress=False, checkpoint=ckpt, resume=True)


def test_resume_refuses_other_weights_with_the_same_configuration(tmp_path):
    model, data = tiny_model(T=6), discrete_data(4)
    ckpt = _checkpoint(tmp_path, model, data)
    other = tiny_model(T=6)
    with torch.no_grad():
        next(other.net.parameters()).mul_(1.001)
    with pytest.raises(ValueError, match="by other weights"):
        dpddpm.cost_matrix(other, data, progress=False, checkpoint=ckpt, resume=True)


def test_resume_refuses_another_autocast_setting(tmp_path):
    model, data = tiny_model(T=6), discrete_data(4)
    ckpt = _checkpoint(tmp_path, model, data)
    with pytest.raises(ValueError, match="autocast"):
        dpddpm.cost_matrix(model, data, progress=False, checkpoint=ckpt, resume=True, autocast="bf16")


def test_resume_refuses_a_checkpoint_without_fingerprints(tmp_path):
    model, data = tiny_model(T=6), discrete_data(4)
    ckpt = _checkpoint(tmp_path, model, data)
    old = dpddpm.CostMatrix.load(ckpt)
    old.info = old.info.replace(data_fingerprint=None)  # as written by a dpddpm without fingerprints
    old.save(ckpt)
    with pytest.raises(ValueError, match="records no data_fingerprint"):
        dpddpm.cost_matrix(model, data, progress=False, checkpoint=ckpt, resume=True)


# ---------------------------------------------------------------- nothing lost: one writer, signals, temp files


def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    from dpddpm.files import claim_output

    model, data = tiny_model(T=6), discrete_data(4)
    ckpt = tmp_path / "c.npz"
    with claim_output(ckpt):  # as if another run held it
        with pytest.raises(FileExistsError, match="another run"):
            dpddpm.cost_matrix(model, data, progress=False, checkpoint=ckpt)
        assert not ckpt.exists()
    dpddpm.cost_matrix(model, data, progress=False, checkpoint=ckpt)  # free again
    assert not list(tmp_path.glob(".c.npz*"))  # no lock or temp file outlives the run


_SLOW_RUN = """
import sys, time
import dpddpm
from dpddpm.files import Terminated
sys.path.insert(0, {tests!r})
from toy_models import assert_costs_close, discrete_data, tiny_model
model = tiny_model(T=400)
model.net.register_forward_hook(lambda *a: time.sleep(0.01))
try:
    dpddpm.cost_matrix(model, discrete_data(4), batch_size=4, progress=False, checkpoint={out!r},
                       save_every=1e9, resume=True)
except Terminated:
    sys.exit(143)
"""


def _start_slow_run(out):
    import subprocess
    import sys
    from pathlib import Path

    code = _SLOW_RUN.format(tests=str(Path(__file__).parent), out=str(out))
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=60.0):
    import time

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError
        time.sleep(0.05)


def test_concurrent_process_is_refused_and_sigterm_saves_finished_rows(tmp_path):
    """A real second process: refused while the first runs; SIGTERM then saves the rows finished so far
    (save_every is huge, so only the signal can have saved them), and resuming completes the matrix."""
    import signal

    from dpddpm.files import lock_path

    ckpt = tmp_path / "c.npz"
    proc = _start_slow_run(ckpt)
    try:
        _wait_for(lambda: lock_path(ckpt).exists() and lock_path(ckpt).read_text().strip() == str(proc.pid))
        with pytest.raises(FileExistsError, match=f"pid {proc.pid}"):
            dpddpm.cost_matrix(tiny_model(T=400), discrete_data(4), progress=False, checkpoint=ckpt, resume=True)
        import time

        time.sleep(0.5)  # let it finish some rows
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, proc.stderr.read()
    finally:
        proc.kill()
    partial = dpddpm.CostMatrix.load(ckpt)
    assert 0 < partial.rows_done.sum() < 400
    assert not lock_path(ckpt).exists() and not list(tmp_path.glob("*.tmp"))
    resumed = dpddpm.cost_matrix(
        tiny_model(T=400), discrete_data(4), batch_size=4, progress=False, checkpoint=ckpt, resume=True
    )
    assert resumed.is_complete


def test_sigkill_leaves_no_lock_and_stale_temp_files_are_removed(tmp_path):
    """SIGKILL: the kernel drops the flock, so the next run may start; a temp file left by a write that the kill
    cut short is deleted by the next run on the same output (and only that output's)."""
    import signal

    from dpddpm.files import lock_path

    ckpt = tmp_path / "c.npz"
    proc = _start_slow_run(ckpt)
    try:
        _wait_for(lambda: lock_path(ckpt).exists())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    stale = tmp_path / ".c.npz.0123abcd.tmp"
    stale.write_bytes(b"x" * 1000)  # what a write cut short by SIGKILL leaves
    unrelated = tmp_path / ".other.npz.0123abcd.tmp"
    unrelated.write_bytes(b"y")
    # the killed run held the lock: a new run may start at once, and it clears the stale temp file
    again = dpddpm.cost_matrix(
        tiny_model(T=400), discrete_data(4), batch_size=4, progress=False, checkpoint=ckpt, resume=True
    )
    assert again.is_complete
    assert not stale.exists() and unrelated.exists()


def test_checkpoints_store_only_the_computed_rows(tmp_path):
    """A 2-row shard of a T = 4000 matrix is a few tens of kB, not 256 MB; it loads back exactly (error bars to
    float32)."""
    T = 4000
    kl = np.full((T + 1, T + 1), np.nan)
    kl[4000, 1:4000] = np.linspace(1, 2, 3999)
    kl[17, 1:17] = 3.0
    counts = np.zeros(T + 1, dtype=np.int64)
    counts[[17, 4000]] = 8
    part = dpddpm.CostMatrix(kl=kl, decoder=np.ones(T + 1), prior=np.ones(T + 1), stderr=kl / 10, counts=counts)
    path = part.save(tmp_path / "shard.npz")
    assert path.stat().st_size < 200_000
    back = dpddpm.CostMatrix.load(path)
    np.testing.assert_array_equal(back.kl, part.kl)
    np.testing.assert_array_equal(back.stderr, part.stderr.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(back.counts, part.counts)


def test_files_of_the_first_format_still_load(tmp_path):
    """Format 1 stored full (T+1, T+1) matrices; such files load unchanged."""
    import json

    T = 5
    kl = np.full((T + 1, T + 1), np.nan)
    kl[np.tril_indices(T + 1, -1)] = 1.0
    kl[:, 0] = np.nan
    path = tmp_path / "v1.npz"
    np.savez(
        path,
        kl=kl,
        decoder=np.r_[np.nan, np.nan, np.ones(T - 1)],
        prior=np.r_[np.nan, np.ones(T)],
        counts=np.r_[0, np.full(T, 3)],
        meta=np.array(json.dumps({"T": T, "format_version": 1})),
    )
    back = dpddpm.CostMatrix.load(path)
    assert back.is_complete and dpddpm.schedule_bpd(back, [5, 2, 1]) == pytest.approx(4.0)
