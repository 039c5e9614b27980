"""Timing a network's own forward calls, to compare a pipeline against its floor of network time."""

from __future__ import annotations

import time

import torch


class NetTimer:
    """Accumulates the wall time of ``module``'s forward calls (synchronizing CUDA around each call).

    Use as a context manager; ``seconds`` is the total and ``calls`` the number of forward calls.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.seconds, self.calls = module, 0.0, 0
        self._start = 0.0
        self._handles: list = []

    def _sync(self, tensors) -> None:
        for x in tensors:
            if isinstance(x, torch.Tensor) and x.is_cuda:
                torch.cuda.synchronize(x.device)
                return

    def _pre(self, module, args) -> None:
        self._sync(args)
        self._start = time.perf_counter()

    def _post(self, module, args, output) -> None:
        self._sync(args)
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def __enter__(self) -> NetTimer:
        self._handles = [
            self.module.register_forward_pre_hook(self._pre),
            self.module.register_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
