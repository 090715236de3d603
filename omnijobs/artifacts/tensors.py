"""Tensors as bytes, so any connector can carry them between stage workers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def tensors_to_bytes(tensors: dict[str, "torch.Tensor"], metadata: dict[str, str] | None = None) -> bytes:
    # safetensors, unlike pickle, cannot run code when a worker loads a tensor it did not write.
    from safetensors.torch import save

    # A consumer may sit on another device or host: store plain contiguous CPU tensors.
    return save({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, metadata=metadata)


def bytes_to_tensors(data: bytes) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load

    return load(data)
