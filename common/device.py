"""The torch device a model runs on when the caller names none: the GPU when there is one."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
