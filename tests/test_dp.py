"""The optimizer: brute force on small T, and properties against the strides (which live in test_strides.py).

Costs from different code paths (the DP's running sums, schedule_bpd's np.sum, torch vs numpy) are summed in
different orders, so they are compared to a relative tolerance, never bit for bit.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import dpddpm

REL = 1e-10  # sums of <= ~100 terms in another order differ by ~1e-14 relative; a wrong path by far more


def assert_at_most(a: float, b: float, rel: float = REL) -> None:
    """a <= b up to round-off relative to their size."""
    assert a <= b + rel * max(1.0, abs(a), abs(b)), (a, b)


def random_costs(T: int, seed: int) -> dpddpm.CostMatrix:
    """Positive random costs on the valid triangle (T+1, T+1), NaN elsewhere; rows scaled by 0.01, 1 or 10."""
    rng = np.random.default_rng(seed)
    kl = np.full((T + 1, T + 1), np.nan)
    for t in range(2, T + 1):
        kl[t, 1:t] = rng.exponential(size=t - 1) * rng.choice([0.01, 1.0, 10.0])
    decoder = np.r_[np.nan, np.nan, rng.exponential(size=T - 1)]
    prior = np.r_[np.nan, rng.exponential(size=T) * 3]
    return dpddpm.CostMatrix(kl=kl, decoder=decoder, prior=prior)


def brute_force(costs: dpddpm.CostMatrix, K: int, start: str) -> float:
    """The lowest ELBO over every K-step schedule (start at T, or anywhere with start="free")."""
    T = costs.T
    best = np.inf
    tops = [T] if start == "T" else range(K, T + 1)
    for top in tops:
        for middle in itertools.combinations(range(top - 1, 1, -1), K - 2):
            best = min(best, dpddpm.schedule_bpd(costs, [top, *middle, 1]))
    return best


@pytest.mark.parametrize("T", [2, 3, 5, 8, 12])
@pytest.mark.parametrize("start", ["T", "free"])
def test_dp_equals_brute_force(T: int, start: str) -> None:
    for seed in range(3):
        costs = random_costs(T, seed)
        best = dpddpm.optimal_schedules(costs, T, start=start)
        for K in range(2, T + 1):
            sched = best.schedule(K)
            assert len(sched) == K and sched[-1] == 1 and np.all(np.diff(sched) < 0)
            if start == "T":
                assert sched[0] == T
            assert best.bpd(K) == pytest.approx(dpddpm.schedule_bpd(costs, sched), rel=REL)
            assert best.bpd(K) == pytest.approx(brute_force(costs, K, start), rel=REL)


def test_never_worse_than_the_strides() -> None:
    T = 300
    costs = random_costs(T, 7)
    best = dpddpm.optimal_schedules(costs, 64)
    free = dpddpm.optimal_schedules(costs, 64, start="free")
    for K in range(2, 65):
        for stride in (dpddpm.even_schedule(T, K), dpddpm.quadratic_schedule(T, K)):
            assert_at_most(best.bpd(K), dpddpm.schedule_bpd(costs, stride))
        assert_at_most(free.bpd(K), best.bpd(K))
        # DDIM's strides start below T: only the free start competes with them, at their number of times
        for stride in (dpddpm.ddim_schedule(T, K, "quad"), dpddpm.ddim_schedule(T, K, "uniform")):
            if len(stride) <= 64:
                assert_at_most(free.bpd(len(stride)), dpddpm.schedule_bpd(costs, stride))


def test_more_steps_never_hurt_when_costs_obey_the_triangle_inequality() -> None:
    """With sub-additive costs (a longer jump costs at least the two shorter ones), extra steps help."""
    T = 40
    t = np.arange(T + 1)
    g = np.sqrt(t + 1.0)
    kl = np.where((t[None, :] >= 1) & (t[None, :] < t[:, None]), (g[:, None] - g[None, :]) ** 2, np.nan)
    costs = dpddpm.CostMatrix(kl=kl, decoder=np.r_[np.nan, np.nan, np.ones(T - 1)], prior=np.r_[np.nan, np.zeros(T)])
    bpd = dpddpm.optimal_schedules(costs, T).bpd_all()
    for more, fewer in zip(bpd[1:], bpd[:-1]):
        assert_at_most(more, fewer)


def test_budget_errors() -> None:
    costs = random_costs(6, 0)
    best = dpddpm.optimal_schedules(costs, 4)
    with pytest.raises(ValueError, match="K"):
        best.schedule(5)
    with pytest.raises(ValueError, match="2 <= K"):
        best.schedule(1)
    with pytest.raises(ValueError, match="2 <= K"):
        dpddpm.optimal_schedules(costs, 7)
    with pytest.raises(ValueError, match="start"):
        dpddpm.optimal_schedules(costs, 3, start="middle")


def test_partial_matrix_is_refused() -> None:
    costs = random_costs(6, 0)
    counts = np.r_[0, np.ones(6, int)]
    counts[4] = 0
    partial = dpddpm.CostMatrix(kl=costs.kl, decoder=costs.decoder, prior=costs.prior, counts=counts)
    with pytest.raises(ValueError, match="partial"):
        dpddpm.optimal_schedules(partial, 3)


def test_large_T_runs_and_uses_compact_pointers() -> None:
    T = 1000
    costs = random_costs(T, 1)
    best = dpddpm.optimal_schedules(costs, 64)
    assert best.pointers.dtype == np.int16
    assert best.values.shape == (65, T + 1)
    sched = best.schedule(64)
    assert best.bpd(64) == pytest.approx(dpddpm.schedule_bpd(costs, sched), rel=REL)


def test_accelerator_sweep_agrees_with_the_cpu_sweep() -> None:
    """The torch sweep (used on CUDA) run on the CPU gives the numpy sweep's values, and arg-min pointers.

    Pointers may differ where two predecessors tie (the libraries' reductions break ties their own way), so
    each path's pointers are checked to reach its minimum rather than compared with each other.
    """
    import torch

    from dpddpm.dp import _edge_weights, _sweep_numpy, _sweep_torch

    T, K_max = 60, 20
    costs = random_costs(T, 3)
    W = _edge_weights(costs.kl)
    sweeps = (lambda v, p: _sweep_numpy(W, v, p), lambda v, p: _sweep_torch(costs.kl, v, p, torch.device("cpu")))
    out = []
    for sweep in sweeps:
        values = np.full((K_max + 1, T + 1), np.inf)
        pointers = np.zeros((K_max + 1, T + 1), dtype=np.int16)
        values[2, 2:] = W[2:, 1] + costs.decoder[2:]
        pointers[2, 2:] = 1
        sweep(values, pointers)
        assert_pointers_reach_the_minimum(W, values, pointers)
        out.append(values)
    np.testing.assert_allclose(out[1], out[0], rtol=1e-12)  # inf where impossible, in both


def assert_pointers_reach_the_minimum(W: np.ndarray, values: np.ndarray, pointers: np.ndarray) -> None:
    """For k >= 3 and t >= k: W[t, p] + values[k-1, p] == values[k, t] at p = pointers[k, t], with 1 < p < t.

    W: (T+1, T+1) edge costs; values, pointers: (K_max+1, T+1) as the sweeps fill them.
    """
    K_max, T = values.shape[0] - 1, values.shape[1] - 1
    for k in range(3, K_max + 1):
        t = np.arange(k, T + 1)
        p = pointers[k, t].astype(np.int64)
        assert np.all((p > 1) & (p < t))
        np.testing.assert_allclose(W[t, p] + values[k - 1, p], values[k, t], rtol=1e-12)


def test_edge_weights_are_inf_wherever_no_edge_exists_on_both_paths() -> None:
    """The sweep's weights equal kl on 1 <= s < t (NaN -> inf) and +inf elsewhere, whatever kl holds there."""
    import torch

    from dpddpm.costmatrix import valid_edges
    from dpddpm.dp import _edge_weights, _edge_weights_torch

    rng = np.random.default_rng(0)
    T = 40
    kl = rng.normal(size=(T + 1, T + 1))
    kl[rng.random(kl.shape) < 0.1] = np.nan
    kl[rng.random(kl.shape) < 0.05] = -1e9
    expected = np.where(valid_edges(T), np.nan_to_num(kl, nan=np.inf), np.inf)
    np.testing.assert_array_equal(_edge_weights(kl), expected)
    np.testing.assert_array_equal(_edge_weights_torch(kl, torch.device("cpu")).numpy(), expected)
    assert np.isfinite(kl).sum() > np.isfinite(expected).sum()  # the input had entries to mask


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_threaded_cpu_sweep_equals_one_thread(workers: int) -> None:
    """Row blocks shared among threads: the same arithmetic per row, so the same table and pointers exactly."""
    from dpddpm.dp import ROW_BLOCK, _edge_weights, _sweep_numpy

    T, K_max = 5 * ROW_BLOCK + 7, 12  # several row blocks, a short last one
    costs = random_costs(T, 5)
    W = _edge_weights(costs.kl)
    out = []
    for n in (1, workers):
        values = np.full((K_max + 1, T + 1), np.inf)
        pointers = np.zeros((K_max + 1, T + 1), dtype=np.int16)
        values[2, 2:] = W[2:, 1] + costs.decoder[2:]
        pointers[2, 2:] = 1
        _sweep_numpy(W, values, pointers, workers=n)
        assert_pointers_reach_the_minimum(W, values, pointers)
        out.append((values, pointers))
    assert np.array_equal(out[0][0], out[1][0]) and np.array_equal(out[0][1], out[1][1])
