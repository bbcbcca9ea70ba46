"""Weight dtype choices shared by the loaders."""

from __future__ import annotations

import torch

from .errors import ZImageInputError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

# The names a user picks in a loader node; "default" keeps what the file holds.
WEIGHT_DTYPES = {
    "default": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn,
}


def parse_weight_dtype(name: str) -> torch.dtype | None:
    if isinstance(name, torch.dtype):
        return name
    if name not in WEIGHT_DTYPES:
        raise ZImageInputError("weight_dtype", repr(name), f"one of {list(WEIGHT_DTYPES)}", "pick one from the list")
    return WEIGHT_DTYPES[name]


def compute_dtype_for(storage: torch.dtype) -> torch.dtype:
    """fp8 is a storage format only: its matmuls run in bf16."""
    return torch.bfloat16 if storage in FP8_DTYPES else storage
