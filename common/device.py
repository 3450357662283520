"""The torch device a model runs on when the caller names none: the GPU when there is one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch


def default_device() -> "torch.device":
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_may_be_present() -> bool:
    """False when this machine certainly has no GPU torch could use, decided without importing torch.

    Why: importing torch to ask ``torch.cuda.is_available()`` costs a second or more, which is the
    whole budget of a command-line search that runs ONNX Runtime on the CPU anyway. No NVIDIA driver
    (``/proc/driver/nvidia/version``) and no ROCm device (``/dev/kfd``), or ``CUDA_VISIBLE_DEVICES``
    set to none, means no GPU; anything else is left to :func:`default_device`.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/kfd").exists()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily sets torch's intra-op thread count (restored on exit); None leaves it alone.

    Why: the hashers' settings may cap their own threads (2 shared cores) without changing the
    process-wide setting their caller chose.
    """
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
