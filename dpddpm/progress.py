"""The one progress bar of long computations (cost matrices, ELBOs, training): tqdm, or nothing."""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool, total: int, desc: str, *, unit: str = "call", initial: int = 0) -> Any | None:
    """A tqdm bar over ``total`` units (network calls, training steps), or None when ``enabled`` is False.

    Callers update it with ``bar.update(n)`` and close it with ``bar.close()`` when it is not None.
    """
    if not enabled:
        return None
    from tqdm.auto import tqdm  # imported only when a bar is shown

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, smoothing=0.05)
