"""Property-based tests (hypothesis) of the optimizer and the cost matrix, on inputs nobody would write by hand.

1. The DP equals brute force over every schedule, whatever a hand-built matrix holds outside its valid
   triangle 1 <= s < t (zeros, huge negatives, infinities, NaN, noise).
2. The DP is never worse than any baseline stride.
3. Merging the row shards of a matrix gives the whole matrix back.
4. Saving and loading a matrix, complete or partial, loses nothing.

Examples are derandomized (the same ones on every run, so a failure reproduces) and each test's count is
sized so that the file runs in a few seconds on 2 cores. Floats from different code paths (the DP's running
sums, np.sum, the merge's pooling) are compared to a relative tolerance, never bit for bit.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from toy_models import discrete_data, tiny_model

import dpddpm
from dpddpm.floatplanes import fits_float32


def examples(n: int) -> settings:
    """Settings for n derandomized examples (database=None: a derandomized run has nothing to replay)."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None)


REL = 1e-9  # a different summation order of <= 10 terms differs by ~1e-15 relative; a wrong path by far more

# What a hand-built matrix may hold where no edge exists; the optimizer must never look there.
GARBAGE = ("zeros", "negative", "huge_negative", "random", "nan", "inf", "-inf")
# Costs on the valid triangle: KL-like, tied (many equal optima), or signed (costs need not be KLs).
TRIANGLE = ("exponential", "ties", "signed")

CostInputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # kl (T+1, T+1), decoder (T+1,), prior (T+1,)


def valid_edges(T: int) -> np.ndarray:
    """Boolean (T+1, T+1): the edges t -> s that exist, 1 <= s < t <= T (written out here, not imported)."""
    t, s = np.indices((T + 1, T + 1))
    return (s >= 1) & (s < t)


def garbage(rng: np.random.Generator, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """An array of the given shape filled the way ``kind`` says (see GARBAGE)."""
    fills = {"zeros": 0.0, "negative": -1.0, "huge_negative": -1e9, "nan": np.nan, "inf": np.inf, "-inf": -np.inf}
    if kind == "random":
        return rng.normal(scale=100.0, size=shape)
    return np.full(shape, fills[kind])


def costs_on(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """n finite costs (n,) of the given kind (see TRIANGLE)."""
    if kind == "ties":
        return rng.integers(0, 3, size=n).astype(np.float64)
    if kind == "signed":
        return rng.normal(scale=5.0, size=n)
    return rng.exponential(size=n) * rng.choice([0.01, 1.0, 10.0])


@st.composite
def cost_inputs(draw: st.DrawFn, min_T: int = 2, max_T: int = 9) -> CostInputs:
    """Raw arrays for CostMatrix(kl=, decoder=, prior=): finite costs where valid, garbage everywhere else."""
    T = draw(st.integers(min_T, max_T))
    outside, inside = draw(st.sampled_from(GARBAGE)), draw(st.sampled_from(TRIANGLE))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kl, decoder, prior = (garbage(rng, outside, shape) for shape in ((T + 1, T + 1), (T + 1,), (T + 1,)))
    valid = valid_edges(T)
    kl[valid] = costs_on(rng, inside, int(valid.sum()))
    decoder[2:] = costs_on(rng, inside, T - 1)  # decoder[u] exists for 2 <= u <= T
    prior[1:] = costs_on(rng, inside, T)  # prior[t] for 1 <= t <= T
    return kl, decoder, prior


def brute_force(inputs: CostInputs, K: int, start: str) -> tuple[float, float]:
    """(lowest ELBO, sum of |terms| on that schedule) over every K-step schedule, from the raw arrays.

    Every schedule is t_K > ... > t_2 > t_1 = 1 with t_K = T (start="T") or any t_K <= T (start="free").
    """
    kl, decoder, prior = inputs
    T = kl.shape[0] - 1
    best, scale = math.inf, 0.0
    for top in [T] if start == "T" else range(K, T + 1):
        for middle in itertools.combinations(range(top - 1, 1, -1), K - 2):
            times = (top, *middle, 1)
            terms = [prior[top], *(kl[t, s] for t, s in zip(times, times[1:])), decoder[times[-2]]]
            if sum(terms) < best:
                best, scale = sum(terms), sum(abs(x) for x in terms)
    return best, scale


def assert_valid_schedule(schedule: np.ndarray, T: int, K: int, start: str) -> None:
    """K times, strictly decreasing, ending at 1, starting at T (start="T") or at most T."""
    assert len(schedule) == K and schedule[-1] == 1 and np.all(np.diff(schedule) < 0), schedule
    assert schedule[0] == T if start == "T" else 1 < schedule[0] <= T, schedule


# The bug this guards against: the optimizer once read kl outside 1 <= s < t, and on this matrix (ones below
# the diagonal, zeros on it) answered [7, 7, 1] for K = 3, a schedule that repeats a time at zero cost.
TRIL_ONES: CostInputs = (np.tril(np.ones((8, 8)), -1), np.ones(8), np.ones(8))
HUGE_NEGATIVE_DIAGONAL: CostInputs = (np.tril(np.ones((6, 6)), -1) - 1e9 * np.eye(6), np.ones(6), np.ones(6))


@examples(300)
@example(inputs=TRIL_ONES)
@example(inputs=HUGE_NEGATIVE_DIAGONAL)
@given(inputs=cost_inputs())
def test_dp_equals_brute_force_whatever_lies_outside_the_triangle(inputs: CostInputs) -> None:
    kl, decoder, prior = inputs
    costs = dpddpm.CostMatrix(kl=kl, decoder=decoder, prior=prior)
    T = costs.T
    for start in ("T", "free"):
        best = dpddpm.optimal_schedules(costs, T, start=start)
        for K in range(2, T + 1):
            schedule = best.schedule(K)
            assert_valid_schedule(schedule, T, K, start)
            lowest, scale = brute_force(inputs, K, start)
            tol = REL * max(1.0, scale)  # signed costs can cancel: the tolerance follows the terms' size
            assert abs(dpddpm.schedule_bpd(costs, schedule) - lowest) <= tol, (start, K, schedule)
            assert abs(best.bpd(K) - lowest) <= tol, (start, K)


def baseline_strides(T: int, K: int) -> dict[str, np.ndarray]:
    """Every baseline stride for budget K: the paper's (start at T) and DDIM's (start below T)."""
    return {
        "even": dpddpm.even_schedule(T, K),
        "quadratic": dpddpm.quadratic_schedule(T, K),
        "ddim-quad": dpddpm.ddim_schedule(T, K, "quad"),
        "ddim-uniform": dpddpm.ddim_schedule(T, K, "uniform"),
    }


@examples(120)
@given(inputs=cost_inputs(min_T=2, max_T=40))
def test_dp_is_never_worse_than_a_stride(inputs: CostInputs) -> None:
    """With t_K = T the DP beats the paper's strides at K steps. DDIM's strides start below T and may have
    fewer (quad) or more (uniform) distinct times than K, so they face the free-start DP at their own length:
    with costs that break the triangle inequality, more steps can cost more, so K itself would prove nothing."""
    kl, decoder, prior = inputs
    costs = dpddpm.CostMatrix(kl=kl, decoder=decoder, prior=prior)
    T = costs.T
    at_T, free = dpddpm.optimal_schedules(costs, T), dpddpm.optimal_schedules(costs, T, start="free")
    for K in range(2, T + 1):
        for name, stride in baseline_strides(T, K).items():
            stride_bpd = dpddpm.schedule_bpd(costs, stride)
            tol = REL * max(1.0, float(np.abs(dpddpm.schedule_terms(costs, stride)).sum()))
            dp = at_T if stride[0] == T else free
            assert dp.bpd(len(stride)) <= stride_bpd + tol, (name, K)
        assert free.bpd(K) <= at_T.bpd(K) + REL * max(1.0, abs(at_T.bpd(K)))


# ------------------------------------------------------------------------------------------ merge of shards
@st.composite
def whole_matrix(draw: st.DrawFn, max_T: int = 12) -> dpddpm.CostMatrix:
    """A complete matrix with standard errors and per-row sample counts (>= 2, so errors are defined)."""
    T = draw(st.integers(2, max_T))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    valid = valid_edges(T)
    kl, stderr = np.full((T + 1, T + 1), np.nan), np.full((T + 1, T + 1), np.nan)
    kl[valid] = rng.exponential(size=valid.sum()) * 10.0 ** rng.integers(-4, 2, size=valid.sum())
    stderr[valid] = kl[valid] * rng.uniform(0.01, 1.0, size=valid.sum())
    vector = lambda first: np.r_[np.full(first, np.nan), rng.exponential(size=T + 1 - first)]  # noqa: E731
    counts = np.r_[0, rng.integers(2, 300, size=T)]
    return dpddpm.CostMatrix(
        kl=kl,
        decoder=vector(2),
        prior=vector(1),
        stderr=stderr,
        decoder_stderr=vector(2),
        prior_stderr=vector(1),
        counts=counts,
        meta={"T": T, "N": int(counts.max()), "model": "synthetic"},
    )


def row_shard(whole: dpddpm.CostMatrix, rows: set[int]) -> dpddpm.CostMatrix:
    """The partial matrix a run over only ``rows`` would give: other rows uncomputed (count 0, NaN)."""
    keep = np.isin(np.arange(whole.T + 1), sorted(rows))
    kl, stderr = whole.kl.copy(), whole.stderr.copy()
    kl[~keep], stderr[~keep] = np.nan, np.nan
    decoder, decoder_stderr = whole.decoder.copy(), whole.decoder_stderr.copy()
    if 1 not in rows:  # row 1 is the decoder row
        decoder[:], decoder_stderr[:] = np.nan, np.nan
    return dpddpm.CostMatrix(
        kl=kl,
        decoder=decoder,
        prior=whole.prior,
        stderr=stderr,
        decoder_stderr=decoder_stderr,
        prior_stderr=whole.prior_stderr,
        counts=np.where(keep, whole.counts, 0),
        meta=whole.meta,
    )


@st.composite
def sharded(draw: st.DrawFn) -> tuple[dpddpm.CostMatrix, list[dpddpm.CostMatrix]]:
    """A whole matrix and its row shards: a random partition of rows 1..T, in a random order."""
    whole = draw(whole_matrix())
    n_parts = draw(st.integers(1, min(4, whole.T)))
    owner = draw(st.lists(st.integers(0, n_parts - 1), min_size=whole.T, max_size=whole.T))
    blocks = [{t for t in range(1, whole.T + 1) if owner[t - 1] == p} for p in range(n_parts)]
    parts = [row_shard(whole, rows) for rows in blocks if rows]  # a partition's blocks are non-empty
    return whole, draw(st.permutations(parts))


def assert_same_matrix(a: dpddpm.CostMatrix, b: dpddpm.CostMatrix, rtol: float = 1e-12) -> None:
    """Means and standard errors agree to rtol (NaN in the same places), counts exactly."""
    assert a.T == b.T
    for name in ("kl", "decoder", "prior", "stderr", "decoder_stderr", "prior_stderr"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=0, equal_nan=True, err_msg=name)
    np.testing.assert_array_equal(a.counts, b.counts)


@examples(150)
@given(case=sharded())
def test_merging_row_shards_gives_the_whole(case: tuple[dpddpm.CostMatrix, list[dpddpm.CostMatrix]]) -> None:
    whole, parts = case
    merged = dpddpm.merge_costs(parts)
    assert merged.is_complete
    assert_same_matrix(merged, whole)  # pooling divides and multiplies by counts: round-off, not bits
    assert merged.meta == whole.meta


@pytest.mark.parametrize("blocks", [[{1, 2, 3}, {4, 5, 6}], [{6}, {1, 3, 5}, {2, 4}], [{2, 5}, {1, 3, 4, 6}]])
def test_merging_computed_row_shards_gives_the_whole(blocks: list[set[int]]) -> None:
    """The same with cost_matrix's own shards of a tiny learned-variance model (T = 6, 9 images)."""
    model, data = tiny_model(T=6), discrete_data(9)
    compute = lambda rows=None: dpddpm.cost_matrix(
        model,
        data,
        batch_size=16,
        progress=False,
        seed=4,  # noqa: E731
        rows=rows,
    )
    whole = compute()
    merged = dpddpm.merge_costs([compute(sorted(rows)) for rows in blocks])
    # Shards batch their rows differently, and each batch fits its own Chebyshev interval for the
    # learned-variance sum: agreement is to the expansion's accuracy (~1e-9), not to the last bit.
    assert_same_matrix(merged, whole, rtol=1e-7)


# ------------------------------------------------------------------------------------------- save and load
@st.composite
def any_matrix(draw: st.DrawFn) -> dpddpm.CostMatrix:
    """A complete or partial matrix, with or without standard errors and counts, with JSON metadata."""
    whole = draw(whole_matrix(max_T=10))
    done = draw(st.lists(st.booleans(), min_size=whole.T, max_size=whole.T))
    matrix = row_shard(whole, {t for t in range(1, whole.T + 1) if done[t - 1]})
    if draw(st.booleans()):  # a hand-built matrix: no errors, no counts (every row taken as computed)
        matrix = dpddpm.CostMatrix(kl=whole.kl, decoder=whole.decoder, prior=whole.prior)
    matrix.meta = {**matrix.meta, **draw(user_meta())}
    return matrix


def user_meta() -> st.SearchStrategy[dict]:
    """JSON-able metadata. Keys carry a prefix so they cannot collide with what the file format records."""
    text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # no lone surrogates: not text
    leaf = (
        st.none()
        | st.booleans()
        | st.integers(-(2**62), 2**62)
        | st.floats(allow_nan=False, allow_infinity=False)
        | text
    )
    value = st.recursive(
        leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6
    )
    return st.dictionaries(text.map(lambda k: "user_" + k), value, max_size=4)


@examples(100)
@given(matrix=any_matrix())
def test_save_and_load_lose_nothing(matrix: dpddpm.CostMatrix) -> None:
    with tempfile.TemporaryDirectory() as folder:  # not tmp_path: one folder per example, not per test
        loaded = dpddpm.CostMatrix.load(matrix.save(Path(folder) / "costs.npz"))
    assert loaded.T == matrix.T and loaded.is_complete == matrix.is_complete
    for name in ("kl", "decoder", "prior", "stderr", "decoder_stderr", "prior_stderr"):
        if getattr(matrix, name) is None:
            assert getattr(loaded, name) is None, name
        else:  # a file is not a computation: float64 in, the same float64 out (NaN where nothing exists) ...
            expected = getattr(matrix, name)
            if name == "stderr" and fits_float32(expected):  # ... but the edges' error bars to float32's 7 digits
                expected = expected.astype(np.float32).astype(np.float64)
            np.testing.assert_array_equal(getattr(loaded, name), expected, err_msg=name)
    np.testing.assert_array_equal(loaded.counts, matrix.counts)
    assert {k: loaded.meta.get(k) for k in matrix.meta} == matrix.meta  # the format may add its own keys
