"""Helpers shared by the benchmark scripts: device naming, timing and writing results/<name>_<device>.json."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import torch

import dpddpm

RESULTS = Path(__file__).parent / "results"


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """Human-readable device name: the GPU's, or the CPU model with the number of usable cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} torch threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """(seconds, result) of fn(), synchronizing CUDA before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def write(name: str, device: torch.device, result: dict) -> Path:
    """Print ``result`` and write it to results/<name>_<device type>.json."""
    result = {
        "benchmark": name,
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "dpddpm_version": dpddpm.__version__,
        **result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(device) if device.type != "cpu" else ""
    tag = device.type if device.type == "cpu" else re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    path = RESULTS / f"{name}_{tag}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path
