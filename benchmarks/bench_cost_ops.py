"""Tensor operations a full cost matrix runs outside its network: on a GPU each is a kernel launch (issue 21).

Counts every ATen operation that is not a view (a view launches nothing) while ``dpddpm.cost_matrix`` builds the
T = 4000 matrix of both bundled digits models on 300 test images; the network's own forward is not counted. The
count is the same on any device, so a CPU measures it. ``--grouping gpu`` runs the learned rows the way a GPU
does (all pieces of a batch in one set of products, moments in one pass), which a CPU does not by default.
Usage: python benchmarks/bench_cost_ops.py [--grouping cpu|gpu] [--out NAME]
(with PYTHONPATH=<another checkout> it counts that checkout's operations; the file records ``dpddpm.__file__``).
"""

from __future__ import annotations

import argparse
import collections

import torch
from common import write
from torch.utils._python_dispatch import TorchDispatchMode

import dpddpm

VIEWS = (
    "slice", "select", "view", "reshape", "aten.t.", "transpose", "expand", "as_strided", "unsqueeze", "squeeze",
    "alias", "detach", "permute", "split", "unbind", "_local_scalar_dense", "lift_fresh",
)  # fmt: skip


class OpCounter(TorchDispatchMode):
    """Counts the non-view operations dispatched while active, except while ``paused``."""

    def __init__(self) -> None:
        super().__init__()
        self.count, self.by_name, self.paused = 0, collections.Counter(), False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not self.paused and not any(v in name for v in VIEWS):
            self.count += 1
            self.by_name[name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(name: str, n: int) -> dict:
    model = dpddpm.load_pretrained(name)
    data = dpddpm.digits_split("test")[:n]
    counter = OpCounter()
    net_forward = model.net.forward

    def forward(*args, **kwargs):  # the network's own operations are not the overhead being counted
        counter.paused = True
        try:
            return net_forward(*args, **kwargs)
        finally:
            counter.paused = False

    model.net.forward = forward
    with counter:
        dpddpm.cost_matrix(model, data, batch_size=4096, progress=False)
    return {
        "ops_outside_network": counter.count,
        "per_row": counter.count / model.T,
        "most": counter.by_name.most_common(8),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grouping", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--out", default="bench_cost_ops")
    args = ap.parse_args()
    if args.grouping == "gpu":
        from dpddpm.rowblock import KLRowBlock

        init = KLRowBlock.__init__

        def as_on_a_gpu(self, *a, **k):
            init(self, *a, **{**k, "pieces_per_group": 1 << 30, "chunk_values": 1 << 30})

        KLRowBlock.__init__ = as_on_a_gpu
    result = {
        "package": dpddpm.__file__,
        "grouping": args.grouping,
        "N": args.n,
        "T": 4000,
        "models": {name: count_ops(name, args.n) for name in ("digits-simple", "digits-hybrid")},
    }
    write(args.out, torch.device("cpu"), result)


if __name__ == "__main__":
    main()
