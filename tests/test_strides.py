"""The baseline strides: improved-diffusion's even stride, our quadratic stride, and DDIM's own strides."""

from __future__ import annotations

import numpy as np
import pytest

import dpddpm


def assert_valid(schedule: np.ndarray, T: int) -> None:
    """A schedule (n,) is int, strictly decreasing, ends at t_1 = 1 and starts at t_n <= T."""
    assert schedule.dtype == np.int64 and schedule.ndim == 1 and len(schedule) >= 2
    assert np.all(np.diff(schedule) < 0) and schedule[-1] == 1 and schedule[0] <= T


# ---------------------------------------------------------------------------------------------- even stride
@pytest.mark.parametrize("T,K", [(4000, 10), (4000, 100), (1000, 250), (10, 10), (7, 2)])
def test_even_stride_matches_improved_diffusion(T: int, K: int) -> None:
    """space_timesteps(T, [K]): frac_stride = (T-1)/(K-1), cur accumulated, round() -- written out here."""
    frac, cur, taken = (T - 1) / (K - 1), 0.0, set()
    for _ in range(K):
        taken.add(round(cur))
        cur += frac
    expected = np.array(sorted(taken, reverse=True)) + 1
    np.testing.assert_array_equal(dpddpm.even_schedule(T, K), expected)


# ----------------------------------------------------------------------------------------- quadratic stride
@pytest.mark.parametrize("fn", [dpddpm.even_schedule, dpddpm.quadratic_schedule])
def test_paper_strides_have_exactly_K_distinct_steps(fn) -> None:
    for T in (2, 3, 17, 100, 4000):
        for K in sorted(k for k in {2, 3, T // 2 + 1, T - 1, T} if 2 <= k <= T):
            s = fn(T, K)
            assert_valid(s, T)
            assert len(s) == K and s[0] == T
    with pytest.raises(ValueError):
        fn(10, 11)
    with pytest.raises(ValueError):
        fn(10, 1)


def test_quadratic_stride_is_quadratic() -> None:
    s = dpddpm.quadratic_schedule(4000, 11)[::-1]
    np.testing.assert_array_equal(s, 1 + np.round(3999 * (np.arange(11) / 10) ** 2))


# Outputs of quadratic_schedule recorded before ddim_schedule was added: its numbers must never move, since
# published tables (the book's, users') were computed with them.
QUADRATIC_PINNED = {
    (1000, 10): [1000, 790, 605, 445, 309, 198, 112, 50, 13, 1],
    (4000, 32): [
        4000,
        3746,
        3501,
        3263,
        3035,
        2814,
        2602,
        2398,
        2202,
        2015,
        1836,
        1666,
        1503,
        1349,
        1204,
        1066,
        937,
        817,
        704,
        600,
        505,
        417,
        338,
        267,
        205,
        151,
        105,
        68,
        38,
        18,
        5,
        1,
    ],
    (1000, 50): [
        1000,
        960,
        920,
        881,
        844,
        807,
        770,
        735,
        700,
        667,
        634,
        602,
        571,
        540,
        511,
        482,
        454,
        427,
        401,
        375,
        351,
        327,
        304,
        282,
        261,
        241,
        221,
        202,
        184,
        167,
        151,
        136,
        121,
        108,
        95,
        83,
        71,
        61,
        51,
        43,
        35,
        28,
        21,
        16,
        11,
        8,
        5,
        3,
        2,
        1,
    ],
    (100, 51): [
        100,
        96,
        92,
        88,
        85,
        81,
        78,
        74,
        71,
        68,
        64,
        61,
        58,
        55,
        52,
        50,
        47,
        44,
        42,
        39,
        37,
        34,
        32,
        30,
        28,
        26,
        25,
        24,
        23,
        22,
        21,
        20,
        19,
        18,
        17,
        16,
        15,
        14,
        13,
        12,
        11,
        10,
        9,
        8,
        7,
        6,
        5,
        4,
        3,
        2,
        1,
    ],
    (17, 9): [17, 13, 10, 7, 5, 4, 3, 2, 1],
    (2, 2): [2, 1],
    (3, 3): [3, 2, 1],
}


@pytest.mark.parametrize("T,K", sorted(QUADRATIC_PINNED))
def test_quadratic_stride_is_unchanged(T: int, K: int) -> None:
    np.testing.assert_array_equal(dpddpm.quadratic_schedule(T, K), QUADRATIC_PINNED[(T, K)])


def test_quadratic_stride_is_unchanged_at_large_K() -> None:
    """T = 4000, K = 1024: the push-up region (one step per time near the data) and the parabola."""
    s = dpddpm.quadratic_schedule(4000, 1024)
    assert s[:8].tolist() == [4000, 3992, 3984, 3977, 3969, 3961, 3953, 3945]
    np.testing.assert_array_equal(s[-40:], np.arange(40, 0, -1))
    assert int(s.sum()) == 1378086


# --------------------------------------------------------------------------------------------- DDIM strides
def ddim_seq(T: int, K: int, skip_type: str) -> list[int]:
    """DDIM's 0-based ``seq`` as ermongroup/ddim's runners/diffusion.py builds it (one entry per network call)."""
    if skip_type == "uniform":
        return list(range(0, T, T // K))
    return [int(x) for x in list(np.linspace(0, np.sqrt(T * 0.8), K) ** 2)]


def ddim_expected(T: int, K: int, skip_type: str) -> np.ndarray:
    """DDIM's visited times in our convention: distinct, 1-based, descending. int64 (n,)."""
    return np.array(sorted({i + 1 for i in ddim_seq(T, K, skip_type)}, reverse=True), dtype=np.int64)


DDIM_CASES = [
    (1000, 10),
    (1000, 50),
    (1000, 100),
    (4000, 32),
    (4000, 1024),
    (1000, 1000),
    (1000, 30),
    (1000, 600),
    (15, 5),
    (50, 7),
    (10, 10),
    (3, 2),
    (2, 2),
]


@pytest.mark.parametrize("skip_type", ["quad", "uniform"])
@pytest.mark.parametrize("T,K", DDIM_CASES)
def test_ddim_schedule_matches_ddim(T: int, K: int, skip_type: str) -> None:
    s = dpddpm.ddim_schedule(T, K, skip_type)
    np.testing.assert_array_equal(s, ddim_expected(T, K, skip_type))
    assert_valid(s, T)


@pytest.mark.parametrize(
    "T,K,distinct", [(1000, 10, 10), (1000, 50, 49), (1000, 100, 96), (4000, 32, 32), (4000, 1024, 942), (10, 10, 7)]
)
def test_ddim_quad_repeats_small_times(T: int, K: int, distinct: int) -> None:
    """K network calls, but truncation repeats indices where the parabola is flat: fewer distinct times."""
    assert len(ddim_seq(T, K, "quad")) == K
    assert len(dpddpm.ddim_schedule(T, K, "quad")) == distinct


def test_ddim_quad_known_values() -> None:
    np.testing.assert_array_equal(dpddpm.ddim_schedule(1000, 10, "quad"), [801, 633, 484, 356, 247, 159, 89, 40, 10, 1])


@pytest.mark.parametrize(
    "T,top", [(1000, 801), (4000, 3201), (2, 2), (10, 9), (15, 12)]
)  # 15: sqrt(12.0) ** 2 = 11.999999999999998, truncated to 11
def test_ddim_quad_stops_near_0_8_T(T: int, top: int) -> None:
    assert dpddpm.ddim_schedule(T, 2, "quad")[0] == top
    assert dpddpm.ddim_schedule(T, T, "quad")[0] == top


@pytest.mark.parametrize(
    "T,K,calls,top",
    [(1000, 100, 100, 991), (4000, 32, 32, 3876), (1000, 30, 31, 991), (1000, 600, 1000, 1000), (50, 7, 8, 50)],
)
def test_ddim_uniform_calls_and_start(T: int, K: int, calls: int, top: int) -> None:
    """range(0, T, T // K) has ceil(T / (T // K)) entries: K when K divides T, more otherwise."""
    s = dpddpm.ddim_schedule(T, K, "uniform")
    assert len(s) == calls and s[0] == top


@pytest.mark.parametrize("K", [1, 0, -3, 11, 2.5])
@pytest.mark.parametrize("skip_type", ["quad", "uniform"])
def test_ddim_schedule_refuses_bad_budgets(K, skip_type: str) -> None:
    with pytest.raises(ValueError, match="K"):
        dpddpm.ddim_schedule(10, K, skip_type)


@pytest.mark.parametrize("skip_type", ["quadratic", "even", ""])
def test_ddim_schedule_refuses_unknown_skip_types(skip_type: str) -> None:
    with pytest.raises(ValueError, match="skip_type"):
        dpddpm.ddim_schedule(10, 5, skip_type)


def ddim_generalized_step(
    x: np.ndarray, eps: np.ndarray, a: float, a_next: float, eta: float, noise: np.ndarray
) -> np.ndarray:
    """One step of DDIM's generalized_steps in our notation: x (n,), eps (n,) the network's output at x."""
    x0 = (x - eps * np.sqrt(1 - a)) / np.sqrt(a)
    c1 = eta * np.sqrt((1 - a / a_next) * (1 - a_next) / (1 - a))
    c2 = np.sqrt((1 - a_next) - c1**2)
    return np.sqrt(a_next) * x0 + c1 * noise + c2 * eps


def ddim_ddpm_step(x: np.ndarray, eps: np.ndarray, a: float, a_next: float, noise: np.ndarray) -> np.ndarray:
    """One step of DDIM's ddpm_steps (ancestral, clipped x^_0) in our notation."""
    beta = 1 - a / a_next
    x0 = np.clip(np.sqrt(1 / a) * x - np.sqrt(1 / a - 1) * eps, -1, 1)
    mean = (np.sqrt(a_next) * beta * x0 + np.sqrt(1 - beta) * (1 - a_next) * x) / (1 - a)
    with np.errstate(divide="ignore"):
        return mean + np.exp(0.5 * np.log(beta)) * noise


@pytest.mark.parametrize("a", [0.9999, 0.5, 1e-3, 4e-5])
def test_a_repeated_ddim_index_is_a_no_op(a: float) -> None:
    """The claim behind ddim_schedule's dropping of repeats: index i -> i leaves x unchanged, for any eta."""
    rng = np.random.default_rng(0)
    x, eps, noise = rng.standard_normal((3, 1000))
    for eta in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(ddim_generalized_step(x, eps, a, a, eta, noise), x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ddim_ddpm_step(x, eps, a, a, noise), x, rtol=1e-10, atol=1e-12)
