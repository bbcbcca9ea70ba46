"""Where the pack's loaded models live: moved to the compute device on use, and moved back to the
CPU when another one needs the room (a 16 GB card holds the 11.7 GiB transformer or the 7.5 GiB
text encoder, not both)."""

from __future__ import annotations

import weakref
from typing import Callable

import torch

from .dtypes import FP8_DTYPES
from .errors import ZImageInputError

_resident: "weakref.WeakValueDictionary[int, torch.nn.Module]" = weakref.WeakValueDictionary()
_RESERVE = 1 << 30  # activations and workspace on top of the weights


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def pick_device() -> torch.device:
    """CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None  # unknown: the CPU and MPS share host memory


def place(module: torch.nn.Module, device: torch.device, make_room: Callable[[int, torch.device], None] | None = None,
          keep: tuple = ()) -> torch.nn.Module:
    """Move ``module`` to ``device``, first moving the pack's other models (except ``keep``: those
    the same step needs) off it if room is short, then asking the host (ComfyUI) to free what it holds."""
    if device_of(module) == device:
        return module
    if device.type == "mps" and any(p.dtype in FP8_DTYPES for p in module.parameters()):
        raise ZImageInputError(
            "weight_dtype", "fp8 weights on Apple MPS", "a dtype the device supports (MPS has no float8 tensors)",
            "set the loader's weight_dtype to bf16 (or fp16)",
        )
    if device.type != "cpu":
        need = module_bytes(module) + _RESERVE
        free = _free_bytes(device)
        if free is not None and free < need:
            for other in list(_resident.values()):
                if other is not module and not any(other is k for k in keep):
                    offload(other)
        if make_room is not None:
            make_room(need, device)
        _resident[id(module)] = module
    module.to(device)
    return module


def offload(module: torch.nn.Module) -> None:
    """Back to the CPU (and forget it as resident)."""
    _resident.pop(id(module), None)
    if device_of(module).type != "cpu":
        module.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def offload_all() -> None:
    for module in list(_resident.values()):
        offload(module)
