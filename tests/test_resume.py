"""Resumable cost-matrix runs: interrupt, check the partial file, resume, compare to an uninterrupted run."""

import numpy as np
import pytest
import torch

import dpddpm
from toy_models import discrete_data, tiny_model


class _Stop:
    """A forward hook that raises KeyboardInterrupt on the n-th network call."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, module, args, output):
        self.calls += 1
        if self.calls >= self.n:
            raise KeyboardInterrupt


def _assert_same(a: dpddpm.CostMatrix, b: dpddpm.CostMatrix) -> None:
    np.testing.assert_allclose(a.kl, b.kl, rtol=1e-8, equal_nan=True)
    np.testing.assert_allclose(a.stderr, b.stderr, rtol=1e-8, equal_nan=True)
    np.testing.assert_allclose(a.decoder, b.decoder, rtol=1e-8, equal_nan=True)
    np.testing.assert_allclose(a.prior, b.prior, rtol=1e-8, equal_nan=True)
    np.testing.assert_array_equal(a.counts, b.counts)


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
    np.testing.assert_allclose(partial.kl[done], full.kl[done], rtol=1e-8, equal_nan=True)

    calls = []
    hook = model.net.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    resumed = dpddpm.cost_matrix(model, data, batch_size=7, progress=False, seed=5, checkpoint=ckpt,
                                 resume=True)
    hook.remove()
    assert sum(calls) == (~done[1:]).sum() * len(data)  # only the missing rows were computed
    _assert_same(resumed, full)
    _assert_same(dpddpm.CostMatrix.load(ckpt), full)


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
        dpddpm.cost_matrix(model, discrete_data(change.get("n", 4)), progress=False, checkpoint=ckpt,
                           resume=True, seed=change.get("seed", 0))


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


def test_autocast_rejects_unknown():
    with pytest.raises(ValueError, match="autocast"):
        dpddpm.cost_matrix(tiny_model(T=4), discrete_data(2), progress=False, autocast="int8")
