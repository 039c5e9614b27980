"""Chebyshev expansions in f of the learned-variance rows (the method is derived in the book's chapter 3).

Per dimension a learned-range row costs 0.5 (phi_s(f) + r_s e^2 exp(-f Delta_s)). On the interval that a group of
samples' f spans, both functions of f are interpolated at n Chebyshev nodes: the sum over dimensions becomes the
moments sum_d T_j(y_d) and sum_d e_d^2 T_j(y_d) of each sample (:meth:`ChebyshevBasis.features`), and each jump s a
vector of node values (:meth:`ChebyshevBasis.node_values`) or of coefficients (:meth:`ChebyshevBasis.coefficients`).
"""

from __future__ import annotations

import math

import torch

from .terms import LN2

F64 = torch.float64


def chebyshev_degree(spread: float) -> int:
    """Number of Chebyshev terms for exp(c y) on [-1, 1] with |c| = spread.

    10 + 1.5 |c| terms gave row costs within 1e-12 relative of the direct sum on the T = 4000 cosine schedule
    for f spanning [-0.1, 1.1] and [-0.5, 1.5] (measured); the DESIGN target is 1e-6.
    """
    return int(min(160, max(8, math.ceil(10 + 1.5 * spread))))


def chebyshev_basis(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_j, n_k) float64: the map from values at the nodes y_k = cos(pi (k + 1/2) / n) to interpolant coefficients."""
    k = torch.arange(n, dtype=F64, device=device)
    j = torch.arange(n, dtype=F64, device=device)
    basis = torch.cos(math.pi * j[:, None] * (k[None, :] + 0.5) / n) * (2.0 / n)
    basis[0] *= 0.5
    return basis


def chebyshev_coefficients(values: torch.Tensor) -> torch.Tensor:
    """Coefficients of the interpolant through Chebyshev nodes: values (S, n) at y_k = cos(pi (k + 1/2) / n)."""
    return values @ chebyshev_basis(values.shape[-1], values.device).T  # (S, n_j)


def chebyshev_moments(
    y: torch.Tensor, weights: torch.Tensor, n: int, chunk_values: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_d T_j(y_d) and sum_d w_d T_j(y_d) for j < n. y, weights: (B, D). Returns two (B, n) tensors.

    The recurrence runs on P_j = s_j T_j with signs s = +, +, -, -, +, +, ...: then P_{j+1} = P_{j-1} + c y P_j
    with c = +-2, one fused multiply-add per term instead of three passes (T_{j+1} = 2 y T_j - T_{j-1}). On a CPU
    the images go through in cache-sized chunks of 32k values per torch thread (4096 x 64 at 15 terms, measured:
    one thread 4.3 ms in chunks of 32k, 5.0 ms of 16k, 10 ms of 128k; two threads 2.5 ms in chunks of 64k,
    7.7 ms of 32k, whose halves are too small to share); on a GPU all at once.
    """
    B, D = y.shape
    # sums land straight in rows of (n, B) buffers (no copy per term); the signs s_j are undone once at the end
    plain, weighted = torch.empty(2, n, B, dtype=F64, device=y.device)
    if chunk_values is None:
        chunk_values = (1 << 15) * torch.get_num_threads() if y.device.type == "cpu" else B * D
    step = max(1, chunk_values // max(D, 1))
    sign = [1.0 if (j // 2) % 2 == 0 else -1.0 for j in range(n + 1)]  # s_j
    for a in range(0, B, step):
        yc, wc = y[a : a + step], weights[a : a + step]
        p_prev, p_cur, product = torch.ones_like(yc), yc.clone(), torch.empty_like(yc)
        plain[0, a : a + step] = D
        torch.sum(wc, dim=1, out=weighted[0, a : a + step])
        for j in range(1, n):
            torch.sum(p_cur, dim=1, out=plain[j, a : a + step])
            torch.sum(torch.mul(wc, p_cur, out=product), dim=1, out=weighted[j, a : a + step])
            p_prev.addcmul_(yc, p_cur, value=2.0 * sign[j + 1] * sign[j])  # P_{j+1}, in P_{j-1}'s place
            p_prev, p_cur = p_cur, p_prev
    signs = torch.tensor(sign[:n], dtype=F64, device=y.device)[:, None]
    return (plain * signs).T, (weighted * signs).T


def chebyshev_span(lo: float, hi: float) -> tuple[float, float]:
    """(m, h): the centre and half-width of the interval [lo, hi] that f spans, widened if it is degenerate."""
    if hi - lo < 1e-6:  # the expansion stays exact on a wider interval
        lo, hi = lo - 1e-3, hi + 1e-3
    return (hi + lo) / 2, (hi - lo) / 2


class ChebyshevBasis:
    """Expansions of learned-variance rows in n Chebyshev polynomials of f, each group of samples on its own span.

    Samples come in groups (a row's images in a batch), group g on [m_g - h_g, m_g + h_g]; :meth:`features` gives
    each sample's moments and :meth:`coefficients` each group's coefficients, so that for a sample of group g,
    bpd(s) = features @ coefficients_g[s]. n serves the widest group: more terms only make a group more exact.
    """

    def __init__(self, spans: list[tuple[float, float]], counts: list[int], delta_max: list[float]) -> None:
        """spans: each group's (lo, hi) of f; counts: its samples; delta_max: the largest Delta_s of its row."""
        self.m, self.h = (list(x) for x in zip(*(chebyshev_span(lo, hi) for lo, hi in spans)))
        self.counts = counts
        self.n = max(chebyshev_degree(d * h) for d, h in zip(delta_max, self.h))
        self._nodes: tuple[torch.Tensor, torch.Tensor] | None = None  # (y_k, basis^T) on the rows' device

    @classmethod
    def spanning(cls, f: torch.Tensor, delta_max: float) -> ChebyshevBasis:
        """One group: the samples f (B, D) of one row."""
        lo, hi = (float(x) for x in torch.aminmax(f))
        return cls([(lo, hi)], [f.shape[0]], [delta_max])

    def features(self, f: torch.Tensor, err2: torch.Tensor, chunk_values: int | None = None) -> torch.Tensor:
        """(B, 2n) float64: [sum_d Ch_k(y_d), sum_d e_d^2 Ch_k(y_d)] for f, err2 (B, D), y = (f - m) / h
        (``chunk_values``: see :func:`chebyshev_moments`)."""
        per_sample = lambda x: torch.tensor(x, dtype=F64, device=f.device).repeat_interleave(  # noqa: E731
            torch.tensor(self.counts, device=f.device)
        )[:, None]
        y = (f - per_sample(self.m)) / per_sample(self.h)
        return torch.cat(chebyshev_moments(y, err2, self.n, chunk_values), dim=1)

    def node_values(self, deltas: list[torch.Tensor], rs: list[torch.Tensor], groups: list[int] | None = None):
        """(G, L, 2n) float64: [phi_s(f), r_s exp(-f Delta_s)] at each group's n nodes f, for the groups ``groups``
        (default all) and their rows' Delta_s and r_s (lists of (L_g,) tensors); zero beyond each group's L_g,
        L the longest (a padded jump has Delta = r = 0). ``node_values @ self.to_coefficients(dims)`` gives the
        coefficients; :func:`~dpddpm.stats.segment_affine_stats` can fold that product in instead.
        """
        groups = list(range(len(deltas))) if groups is None else groups
        device = deltas[0].device
        y_nodes = self._nodes_on(device)[0]
        if len(groups) == 1:  # views, no padding (a CPU's path: one piece at a time)
            (g,) = groups
            f_nodes, delta, r = (self.m[g] + self.h[g] * y_nodes)[None], deltas[0][None], rs[0][None]
        else:
            nodes = torch.tensor([[self.m[g], self.h[g]] for g in groups], dtype=F64, device=device)  # (G, 2)
            f_nodes = nodes[:, :1] + nodes[:, 1:] * y_nodes  # (G, n): f at each group's nodes
            delta = torch.nn.utils.rnn.pad_sequence(deltas, batch_first=True)  # (G, L)
            r = torch.nn.utils.rnn.pad_sequence(rs, batch_first=True)
        neg_xs = -delta[:, :, None] * f_nodes[:, None, :]  # (G, L, n): -f Delta_s at the nodes
        values = torch.empty(*neg_xs.shape[:2], 2, self.n, dtype=F64, device=device)
        torch.sub(torch.expm1(neg_xs), neg_xs, out=values[:, :, 0])  # phi_s(f) = xs - 1 + exp(-xs)
        torch.mul(torch.exp(neg_xs), r[:, :, None], out=values[:, :, 1])  # r_s exp(-xs)
        return values.view(len(groups), -1, 2 * self.n)

    def to_coefficients(self, dims: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(2n, 2n) float64: node values -> coefficients in bits per dimension (both halves: the node-to-coefficient
        matrix of :func:`chebyshev_basis`, transposed, on the diagonal, times 0.5 / (dims ln 2))."""
        basis_t = self._nodes_on(device)[1] * (0.5 / (dims * LN2))  # nats summed over dims -> bits per dim
        return torch.block_diag(basis_t, basis_t)

    def coefficients(
        self, deltas: list[torch.Tensor], rs: list[torch.Tensor], dims: int, groups: list[int] | None = None
    ) -> torch.Tensor:
        """(G, L, 2n) float64: the coefficients of groups ``groups`` (default all) for their rows' Delta_s and r_s
        (lists of (L_g,) tensors), in bits per dimension; zero beyond each group's L_g, L the longest.

        Names as in the book's chapter 3: row s is [a_s | r_s b_s], a_sk and b_sk the coefficients of phi_s(f)
        and exp(-f Delta_s); sum_d KL_d = 0.5 sum_k (a_sk M_k + r_s b_sk W_k).
        """
        values = self.node_values(deltas, rs, groups)
        return values @ self.to_coefficients(dims, values.device)

    def _nodes_on(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(y_k (n,), the node-to-coefficient matrix transposed (n, n)) on ``device``, made once per basis."""
        if self._nodes is None or self._nodes[0].device != torch.device(device):
            k = torch.arange(self.n, dtype=F64, device=device)
            self._nodes = torch.cos(math.pi * (k + 0.5) / self.n), chebyshev_basis(self.n, device).T
        return self._nodes
