"""Where the diffusers engine's loaded models live (without ComfyUI; inside ComfyUI its memory manager
places its own models): moved to the compute device on use, and moved back to the CPU when another one
needs the room (a 16 GB card holds the 11.7 GiB transformer or the 7.5 GiB text encoder, not both)."""

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
    the same step needs) off it if room is short, then ``make_room`` (the caller's own way to free memory)."""
    if device.type == "mps" and any(p.dtype in FP8_DTYPES for p in module.parameters()):
        raise ZImageInputError(
            "weight_dtype", "fp8 weights on Apple MPS", "a dtype the device supports (MPS has no float8 tensors)",
            "set the loader's weight_dtype to bf16 (or fp16)",
        )
    if device_of(module) == device:
        return module
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


# ------------------------------------------------------------------ memory modes for the transformer

MEMORY_MODES = ("auto", "full", "block_offload", "leaf_offload")
_GO_HOOK = "group_offloading"  # diffusers' hook name (diffusers.hooks.group_offloading)


class _Placement:
    def __init__(self):
        self.mode = "full"
        self.device: torch.device | None = None


def _placement(module: torch.nn.Module) -> _Placement:
    from .module_state import attached

    return attached(module, "_zimage_placement", _Placement)


def repeated_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks that block offloading streams one at a time."""
    return [b for name in ("layers", "noise_refiner", "context_refiner") for b in getattr(module, name, [])]


def block_bytes(module: torch.nn.Module) -> int:
    """The largest repeated block (what block offloading holds on the device at a time)."""
    return max((module_bytes(b) for b in repeated_blocks(module)), default=module_bytes(module))


def resident_bytes(module: torch.nn.Module) -> int:
    """What stays on the device under block offloading: embedders, final layer, pad tokens."""
    return module_bytes(module) - sum(module_bytes(b) for b in repeated_blocks(module))


def transformer_activation_bytes(module: torch.nn.Module, batch: int, height: int, width: int, caption_tokens: int = 512,
                                 dtype: torch.dtype = torch.bfloat16) -> int:
    """A block's working memory for one forward: image tokens (latent h/2 × w/2) plus the caption,
    through the feed-forward (three hidden-size tensors) and attention (about eight model-width
    tensors) — 122 KB per token in bf16 for Z-Image, as traced (tests/test_memory_budget.py)."""
    config = module.config
    dim = config.dim
    hidden = int(dim / 3 * 8)
    tokens = (height // 2) * (width // 2) + caption_tokens
    return batch * tokens * (3 * hidden + 8 * dim) * torch.empty((), dtype=dtype).element_size()


def room_for(module: torch.nn.Module, device: torch.device, keep: tuple = ()) -> int | None:
    """What ``module`` could have on ``device``: the free memory plus what the models that may be
    moved off hold (the pack's own others), plus the module itself when it is already there."""
    free = _free_bytes(device)
    if free is None:
        return None
    free += sum(module_bytes(m) for m in list(_resident.values()) if m is not module and not any(m is k for k in keep) and device_of(m) == device)
    if _placement(module).mode == "full" and device_of(module) == device:
        free += module_bytes(module)  # already resident: its own bytes count as free
    return free


def choose_mode(module: torch.nn.Module, free: int | None, activations: int) -> str:
    """``auto``: the whole model when it fits with the activations, else one block at a time
    (two with prefetch), else one layer at a time."""
    if free is None:
        return "full"
    if module_bytes(module) + activations + _RESERVE <= free:
        return "full"
    if resident_bytes(module) + 2 * block_bytes(module) + activations + _RESERVE <= free:
        return "block_offload"
    return "leaf_offload"


def place_transformer(module: torch.nn.Module, device: torch.device, mode: str, activations: int,
                      make_room: Callable[[int, torch.device], None] | None = None, keep: tuple = ()) -> str:
    """Put the transformer where ``mode`` says: ``full`` moves it to ``device``; the offload modes
    apply diffusers' group offloading (block level: one transformer block per group; leaf level: one
    layer), prefetching the next group on a side stream on CUDA. Returns the mode used."""
    if mode not in MEMORY_MODES:
        raise ZImageInputError("memory_mode", repr(mode), f"one of {list(MEMORY_MODES)}", "pick one from the list")
    if device.type == "cpu":
        mode = "full"  # nothing to offload to
    elif mode == "auto":
        mode = choose_mode(module, room_for(module, device, keep), activations)
    state = _placement(module)
    if mode == "full":
        if state.mode != "full":
            remove_offloading(module)
        place(module, device, make_room, keep)
        return mode
    if state.mode == mode and state.device == device:
        return mode
    offload(module)
    if make_room is not None:
        make_room(block_bytes(module) * 2 + activations + _RESERVE, device)
    apply_offloading(module, mode, device)
    return mode


def apply_offloading(module: torch.nn.Module, mode: str, device: torch.device) -> None:
    """diffusers' group offloading onto ``device`` (any device: the tests use the CPU as both ends)."""
    from diffusers.hooks import apply_group_offloading

    remove_offloading(module)
    kind = "block_level" if mode == "block_offload" else "leaf_level"
    apply_group_offloading(module, onload_device=device, offload_device=torch.device("cpu"), offload_type=kind,
                           num_blocks_per_group=1 if kind == "block_level" else None, use_stream=device.type == "cuda")
    state = _placement(module)
    state.mode, state.device = mode, device


def is_offloaded(module: torch.nn.Module) -> bool:
    return _placement(module).mode != "full"


def onload_device(module: torch.nn.Module) -> torch.device | None:
    """The device an offloaded module computes on (its weights sit on the CPU between calls); None
    when it is not offloaded."""
    state = _placement(module)
    return state.device if state.mode != "full" else None


def remove_offloading(module: torch.nn.Module) -> None:
    """Take diffusers' group-offloading hooks off (the weights end up on the CPU)."""
    if not is_offloaded(module):
        return
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading"):
        registry.remove_hook(name, recurse=True)
    state = _placement(module)
    state.mode, state.device = "full", None
    module.to("cpu")


def weights_changed(module: torch.nn.Module) -> None:
    """After a LoRA merge or a per-step swap: group offloading with streams copies from pinned host
    copies it made when applied, so it must be applied again or it would keep computing with the old
    weights (diffusers' own helper for exactly this)."""
    if is_offloaded(module):
        from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading

        _maybe_remove_and_reapply_group_offloading(module)


class top_level_onloaded:
    """The transformer's own small parts (embedders, pad tokens, final layer) on the device while the
    pack calls its blocks one by one (the ControlNet path): diffusers onloads them in the top-level
    module's forward hook, which that path does not go through."""

    def __init__(self, module: torch.nn.Module):
        self.group = None
        if is_offloaded(module):
            registry = getattr(module, "_diffusers_hook", None)
            hook = registry.get_hook(_GO_HOOK) if registry is not None else None
            self.group = getattr(hook, "group", None)

    def __enter__(self):
        if self.group is not None:
            self.group.onload_()
        return self

    def __exit__(self, *exc):
        if self.group is not None:
            self.group.offload_()
        return False
