"""Per-step parameters: named tensors that replace some of a module's own while one step runs.

A model object says which tensors it wants (``ZImageTransformer.param_set``, None = the module's own)
and which LoRAs on top (``lora_stack``). ``prepare_weights`` brings the shared module into that state,
moving only the tensors that differ: the replacement tensors wait in host memory (pinned when CUDA is
used, so the copy is fast and asynchronous) and the module's own tensors for those names are kept on
the host too, so at most one set of the differing tensors sits on the device at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .lora_merge import merge_state, sync_lora_stack
from .residency import weights_changed
from .module_state import attached


@dataclass(eq=False)
class ParamSet:
    """Tensors (by diffusers parameter name) that differ from the module's own for one step."""

    tensors: dict
    label: str = ""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class _SwapState:
    def __init__(self):
        self.current: ParamSet | None = None
        self.own_on_host: dict[str, torch.Tensor] = {}  # the module's own tensors of swapped names
        self.bytes_moved = 0  # host -> device, for benchmarks
        self.swaps = 0


def swap_state(module: torch.nn.Module) -> _SwapState:
    return attached(module, "_zimage_swap_state", _SwapState)


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A host tensor for later host -> device copies: pinned when CUDA is in use."""
    if tensor.device.type != "cpu":
        tensor = tensor.to("cpu")
    if torch.cuda.is_available() and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor


def prepare_weights(transformer) -> None:
    """Bring ``transformer.module`` to the tensors and LoRAs that ``transformer`` asks for."""
    module = transformer.module
    wanted = getattr(transformer, "param_set", None)
    state = swap_state(module)
    before = (state.current, tuple(merge_state(module).applied))
    if state.current is not wanted:
        sync_lora_stack(module, ())  # merged LoRAs sit on whichever tensors are loaded: take them off first
        _swap(module, state, wanted)
    sync_lora_stack(module, getattr(transformer, "lora_stack", ()))
    if (state.current, tuple(merge_state(module).applied)) != before:
        weights_changed(module)


def _swap(module: torch.nn.Module, state: _SwapState, wanted: ParamSet | None) -> None:
    old = set(state.current.tensors) if state.current is not None else set()
    new = set(wanted.tensors) if wanted is not None else set()
    with torch.no_grad():
        for name in old - new:
            _load(module, state, name, state.own_on_host.pop(name))
        for name in new:
            param = module.get_parameter(name)
            if name not in state.own_on_host:
                state.own_on_host[name] = param.data if param.device.type == "cpu" else host_copy(param.data)
            _load(module, state, name, wanted.tensors[name])
    state.current = wanted
    state.swaps += 1


def _load(module, state: _SwapState, name: str, tensor: torch.Tensor) -> None:
    param = module.get_parameter(name)
    if tensor.device != param.device:
        state.bytes_moved += tensor.numel() * tensor.element_size()
        tensor = tensor.to(param.device, non_blocking=tensor.is_pinned())
    param.data = tensor if tensor.dtype == param.dtype else tensor.to(param.dtype)
