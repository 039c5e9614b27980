"""The optimizer: brute force on small T, properties against the strides, and the paper's baselines."""

import itertools

import numpy as np
import pytest

import dpddpm


def random_costs(T: int, seed: int) -> dpddpm.CostMatrix:
    rng = np.random.default_rng(seed)
    kl = np.full((T + 1, T + 1), np.nan)
    for t in range(2, T + 1):
        kl[t, 1:t] = rng.exponential(size=t - 1) * rng.choice([0.01, 1.0, 10.0])
    decoder = np.r_[np.nan, np.nan, rng.exponential(size=T - 1)]
    prior = np.r_[np.nan, rng.exponential(size=T) * 3]
    return dpddpm.CostMatrix(kl=kl, decoder=decoder, prior=prior)


def brute_force(costs: dpddpm.CostMatrix, K: int, start: str) -> float:
    T = costs.T
    best = np.inf
    tops = [T] if start == "T" else range(K, T + 1)
    for top in tops:
        for middle in itertools.combinations(range(top - 1, 1, -1), K - 2):
            best = min(best, dpddpm.schedule_bpd(costs, [top, *middle, 1]))
    return best


@pytest.mark.parametrize("T", [2, 3, 5, 8, 12])
@pytest.mark.parametrize("start", ["T", "free"])
def test_dp_equals_brute_force(T, start):
    for seed in range(3):
        costs = random_costs(T, seed)
        best = dpddpm.optimal_schedules(costs, T, start=start)
        for K in range(2, T + 1):
            sched = best.schedule(K)
            assert len(sched) == K and sched[-1] == 1 and np.all(np.diff(sched) < 0)
            if start == "T":
                assert sched[0] == T
            assert best.bpd(K) == pytest.approx(dpddpm.schedule_bpd(costs, sched), rel=1e-12)
            assert best.bpd(K) == pytest.approx(brute_force(costs, K, start), rel=1e-12)


def test_never_worse_than_the_strides():
    T = 300
    costs = random_costs(T, 7)
    best = dpddpm.optimal_schedules(costs, 64)
    free = dpddpm.optimal_schedules(costs, 64, start="free")
    for K in range(2, 65):
        for stride in (dpddpm.even_schedule(T, K), dpddpm.quadratic_schedule(T, K)):
            assert best.bpd(K) <= dpddpm.schedule_bpd(costs, stride) + 1e-12
        assert free.bpd(K) <= best.bpd(K) + 1e-12


def test_more_steps_never_hurt_when_costs_obey_the_triangle_inequality():
    """With sub-additive costs (a longer jump costs at least the two shorter ones), extra steps help."""
    T = 40
    t = np.arange(T + 1)
    g = np.sqrt(t + 1.0)
    kl = np.where((t[None, :] >= 1) & (t[None, :] < t[:, None]), (g[:, None] - g[None, :]) ** 2, np.nan)
    costs = dpddpm.CostMatrix(kl=kl, decoder=np.r_[np.nan, np.nan, np.ones(T - 1)], prior=np.r_[np.nan,
                              np.zeros(T)])
    bpd = dpddpm.optimal_schedules(costs, T).bpd_all()
    assert np.all(np.diff(bpd) <= 1e-12)


def test_budget_errors():
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


def test_partial_matrix_is_refused():
    costs = random_costs(6, 0)
    counts = np.r_[0, np.ones(6, int)]
    counts[4] = 0
    partial = dpddpm.CostMatrix(kl=costs.kl, decoder=costs.decoder, prior=costs.prior, counts=counts)
    with pytest.raises(ValueError, match="partial"):
        dpddpm.optimal_schedules(partial, 3)


def test_large_T_runs_and_uses_compact_pointers():
    T = 1000
    costs = random_costs(T, 1)
    best = dpddpm.optimal_schedules(costs, 64)
    assert best.pointers.dtype == np.int16
    assert best.values.shape == (65, T + 1)
    sched = best.schedule(64)
    assert best.bpd(64) == pytest.approx(dpddpm.schedule_bpd(costs, sched), rel=1e-12)


@pytest.mark.parametrize("T,K", [(4000, 10), (4000, 100), (1000, 250), (10, 10), (7, 2)])
def test_even_stride_matches_improved_diffusion(T, K):
    """space_timesteps(T, [K]): frac_stride = (T-1)/(K-1), cur accumulated, round() -- written out here."""
    frac, cur, taken = (T - 1) / (K - 1), 0.0, set()
    for _ in range(K):
        taken.add(round(cur))
        cur += frac
    expected = np.array(sorted(taken, reverse=True)) + 1
    np.testing.assert_array_equal(dpddpm.even_schedule(T, K), expected)


@pytest.mark.parametrize("fn", [dpddpm.even_schedule, dpddpm.quadratic_schedule])
def test_strides_have_exactly_K_distinct_steps(fn):
    for T in (2, 3, 17, 100, 4000):
        for K in sorted(k for k in {2, 3, T // 2 + 1, T - 1, T} if 2 <= k <= T):
            s = fn(T, K)
            assert len(s) == K and s[0] == T and s[-1] == 1 and np.all(np.diff(s) < 0)
    with pytest.raises(ValueError):
        fn(10, 11)
    with pytest.raises(ValueError):
        fn(10, 1)


def test_quadratic_stride_is_quadratic():
    s = dpddpm.quadratic_schedule(4000, 11)[::-1]
    np.testing.assert_array_equal(s, 1 + np.round(3999 * (np.arange(11) / 10) ** 2))


def test_accelerator_sweep_agrees_with_the_cpu_sweep():
    """The torch sweep (used on CUDA) run on the CPU gives the same values and pointers as numpy's."""
    from dpddpm.dp import _sweep_numpy, _sweep_torch

    costs = random_costs(60, 3)
    W = np.nan_to_num(costs.kl, nan=np.inf)
    out = []
    for sweep in (_sweep_numpy, _sweep_torch):
        values = np.full((21, 61), np.inf)
        pointers = np.zeros((21, 61), dtype=np.int16)
        values[2, 2:] = W[2:, 1] + costs.decoder[2:]
        pointers[2, 2:] = 1
        sweep(W, values, pointers, __import__("torch").device("cpu"))
        out.append((values, pointers))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_schedule_stderr_adds_every_edge():
    T = 4
    kl = np.full((T + 1, T + 1), np.nan)
    kl[np.tril_indices(T + 1, -1)] = 1.0
    kl[:, 0] = np.nan
    se = np.where(np.isnan(kl), np.nan, 1.0)
    costs = dpddpm.CostMatrix(kl=kl, decoder=np.r_[np.nan, np.nan, np.ones(T - 1)], prior=np.r_[np.nan, np.ones(T)],
                              stderr=se, decoder_stderr=np.r_[np.nan, np.nan, np.ones(T - 1)])
    assert dpddpm.schedule_stderr(costs, [4, 1]) == pytest.approx(np.sqrt(2))  # L(4, 1) and decoder[4]
    assert dpddpm.schedule_stderr(costs, [4, 2, 1]) == pytest.approx(np.sqrt(3))
