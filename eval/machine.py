"""What a reported number was measured on: every results JSON records it."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else platform.processor()
        flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
        info["popcnt_avx2_avx512"] = [f for f in ("popcnt", "avx2", "avx512f", "avx512_vpopcntdq") if f" {f}" in flags]
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        info["mem_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor()
    try:
        import faiss
        import torch

        info.update(faiss=faiss.__version__, faiss_omp_threads=faiss.omp_get_max_threads(),
                    torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return info
