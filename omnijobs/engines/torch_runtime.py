"""Process-wide torch setup shared by every torch engine."""

from __future__ import annotations

import os
import sys


def configure_threads(threads: int) -> None:
    """Pin torch's CPU threads; a busy neighbour process otherwise makes tiny models 10-100x slower."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    if "torch" not in sys.modules:
        return  # torch reads the variables when an engine imports it
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass  # already fixed once parallel work ran in this process; the intra-op setting still applies


def torch_device(device: str) -> str:
    """Map our --device to a torch device. CUDA_VISIBLE_DEVICES already narrowed the GPU to index 0."""
    return "cpu" if device == "cpu" else "cuda:0"
