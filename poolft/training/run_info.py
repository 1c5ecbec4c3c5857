"""Facts recorded with every run: hardware, software versions, poolft commit, peak memory."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any

import torch


def cpuinfo_field(key: str) -> str | None:
    """The value of the first ``key`` line of /proc/cpuinfo (None where there is none, as off Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == key:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """``vendor_id`` of /proc/cpuinfo (``GenuineIntel``, ``AuthenticAMD``), or ``unknown``."""
    return cpuinfo_field("vendor_id") or "unknown"


def cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags") or "").split())


#: the CPU features that pick torch's matrix kernels (and so the rounding of a result): AMX tiles,
#: AVX-512 (with its bf16/fp16 forms), AVX2
MATRIX_FLAGS = ("amx_bf16", "amx_fp16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")


def matrix_flags() -> list[str]:
    """The ``MATRIX_FLAGS`` this CPU has, sorted."""
    return sorted(cpu_flags() & set(MATRIX_FLAGS))


def precision_identity(resolved: str) -> str:
    """The precision part of a run's identity at ``resolved`` (``no``/``bf16``/``fp16``).

    A 16-bit run is tied to the device and CPU matrix features it ran on (on SST-2 fine-tuning, bf16
    gave 0.8200 on an AMX CPU where the fp32 record was 0.8211). Full precision is ``no`` here; the
    CPU it ran on is checked apart (``numeric_kind``), so that records made before that check keep
    their identity.
    """
    if resolved == "no":
        return "no"
    if torch.cuda.is_available():
        return f"{resolved}@cuda:{torch.cuda.get_device_name(0)}"
    return f"{resolved}@cpu:{'+'.join(matrix_flags()) or 'none'}"


VENDORS = {"intel": "GenuineIntel", "amd": "AuthenticAMD"}


def numeric_kind(recorded: dict[str, Any] | None = None) -> str:
    """What picks the rounding of a full-precision run: the GPU, else the CPU vendor and matrix features.

    torch's CPU kernels come from MKL, oneDNN and its own vectorised loops, and each picks its code
    path by vendor and instruction set. So one fp32 run gives other numbers on another kind of CPU:
    a Fashion-MNIST fine-tune recorded on an Intel Xeon (AMX, AVX-512) at accuracy 0.778 gave 0.782
    on an AMD EPYC (AVX-512), twice, bit for bit. ``recorded`` is a record's ``hardware`` (its vendor
    read from the CPU's name where the record predates ``cpu_vendor``); None is this machine.
    """
    if recorded is None:
        recorded = hardware()
    if recorded.get("gpu"):
        return f"cuda:{recorded['gpu']}"
    vendor = recorded.get("cpu_vendor")
    if not vendor:
        name = str(recorded.get("cpu", "")).lower()
        vendor = next((v for key, v in VENDORS.items() if key in name), "unknown")
    return f"cpu:{vendor}:{'+'.join(sorted(recorded.get('cpu_flags') or [])) or 'none'}"


def hardware() -> dict[str, Any]:
    """CPU model, cores and matrix features, torch threads, and the GPU when there is one."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_vendor": cpu_vendor(),
        "cpu_flags": matrix_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def software() -> dict[str, str]:
    import accelerate
    import datasets
    import transformers

    from .. import __version__

    return {
        "poolft": __version__,
        "poolft_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
    }


def git_commit() -> str:
    """The commit of the poolft checkout (``+dirty`` with local changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (and peak GPU memory) in MiB."""
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def bf16_supported() -> bool:
    """True where bf16 autocast is known to be fast: a CUDA GPU with bf16, or a CPU with AMX tiles.

    AVX512-BF16 without AMX is left at fp32 until more than one such CPU is measured: an earlier
    session found MiniLM steps slower in bf16 there (no figure of it was kept), while on a 2-core
    AMD EPYC with AVX512-BF16 and no AMX, ``python scripts/bench_precision.py --no-compile`` ran the
    SST-2 job at 164.1 train samples/s in bf16 against 121.7 in fp32 (1.35x, accuracy +0.1 point;
    scripts/BENCHMARKS.md).
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return "amx_bf16" in cpu_flags()
