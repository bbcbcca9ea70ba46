"""Applying LoRA stacks to a loaded transformer: merged into the weights when sampling starts,
reversibly.

A model object carries the stack it wants (``ZImageTransformer.lora_stack``); the module remembers
the stack that is merged into it. ``sync_lora_stack`` moves the module from one to the other:
patches that are no longer wanted are removed by restoring the original tensors (bit-exact), new
ones are added on top, and an unchanged stack costs nothing, so 20 queued prompts merge once.
Weights are never changed in place: a patched weight is a new tensor and the original is kept
(for weights still memory-mapped on the CPU that costs no copy). fp8 weights are patched in float32
and stored back in fp8.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from .module_state import attached
from .quantized import ComputePatch, QuantizedLinear
from .lora_files import LoraFile, Target, group_delta, lora_factors, match_groups, read_lora, resolve, target_table

log = logging.getLogger("zimage")


@dataclass
class LoraReport:
    name: str
    format: str
    applied: list[str]
    not_applied: list[tuple[str, str]]

    def text(self) -> str:
        total = len(self.applied) + len(self.not_applied)
        lines = [f"{self.name} ({self.format}): applied {len(self.applied)} of {total} keys"]
        if self.not_applied:
            lines.append(f"NOT applied ({len(self.not_applied)}):")
            lines += [f"  {key}: {reason}" for key, reason in self.not_applied]
        return "\n".join(lines)


@dataclass(frozen=True)
class LoraPatch:
    """One LoRA file at one strength, resolved against a model's layers."""

    identity: tuple  # (path, size, mtime): a changed file is a different patch
    strength: float
    lora: LoraFile = field(compare=False, hash=False, repr=False)
    resolved: tuple = field(compare=False, hash=False, repr=False)  # ((group, (Target, ...)), ...)

    @property
    def params(self) -> set[str]:
        return {t.param for _, targets in self.resolved for t in targets}


def prepare_lora(module: torch.nn.Module, path: str, strength: float) -> tuple[LoraPatch, LoraReport]:
    """Read a LoRA file and resolve every key against ``module``; nothing is changed yet."""
    lora = read_lora(path)
    table = target_table(module)

    def locate(group):
        targets = resolve(group, table)
        if targets is None:
            return None
        rows = sum((t.rows[1] - t.rows[0]) if t.rows else _weight_shape(module, t.param)[0] for t in targets)
        return tuple(targets), (rows, _weight_shape(module, targets[0].param)[1])

    resolved, applied, not_applied = match_groups(lora, locate)
    stat = os.stat(path)
    patch = LoraPatch((os.path.abspath(path), stat.st_size, stat.st_mtime_ns), float(strength), lora, tuple(resolved))
    report = LoraReport(lora.name, lora.format, applied, not_applied)
    log.info("Z-Image LoRA %s", report.text())
    return patch, report


class _MergeState:
    """What is merged into a module: the patches in order, and the original of every patched weight."""

    def __init__(self):
        self.applied: list[LoraPatch] = []
        self.originals: dict[str, torch.Tensor] = {}
        self.compute_patched: set[str] = set()  # quantised layers patched at compute time
        self.weights_written = 0  # for tests and benchmarks


def merge_state(module: torch.nn.Module) -> _MergeState:
    return attached(module, "_zimage_lora_state", _MergeState)


def sync_lora_stack(module: torch.nn.Module, stack: tuple[LoraPatch, ...]) -> None:
    """Make the weights of ``module`` equal the originals plus ``stack``; on any failure the module
    is left with its original weights."""
    state = merge_state(module)
    stack = tuple(stack)
    if tuple(state.applied) == stack:
        return
    keep = 0
    while keep < min(len(state.applied), len(stack)) and state.applied[keep] == stack[keep]:
        keep += 1
    try:
        removed = state.applied[keep:]
        if removed:
            touched = set().union(*(p.params for p in removed))
            _restore(module, state, touched)
            state.applied = state.applied[:keep]
            for patch in state.applied:  # re-add the kept patches on the restored weights
                _apply(module, state, patch, only=touched)
        for patch in stack[keep:]:
            _apply(module, state, patch)
            state.applied.append(patch)
    except BaseException:
        _restore(module, state, set(state.originals) | state.compute_patched)
        state.applied = []
        raise


def _weight_shape(module: torch.nn.Module, param: str) -> tuple[int, int]:
    """The logical [out, in] of a Linear weight (a quantised layer stores other shapes)."""
    return tuple(module.get_submodule(param.rpartition(".")[0]).weight.shape)


def _apply(module, state: _MergeState, patch: LoraPatch, only: set[str] | None = None) -> None:
    if patch.strength == 0:
        return
    with torch.no_grad():
        for group, targets in patch.resolved:
            for target in targets:
                if only is not None and target.param not in only:
                    continue
                owner = module.get_submodule(target.param.rpartition(".")[0])
                if isinstance(owner, QuantizedLinear):
                    # the stored bytes stay as they are: the LoRA is added to the layer's output
                    owner.patches[(id(patch), id(group), target.rows)] = _compute_patch(group, target.rows, patch.strength)
                    state.compute_patched.add(target.param)
                    state.weights_written += 1
                    continue
                param = module.get_parameter(target.param)
                if target.param not in state.originals:
                    original = param.data
                    state.originals[target.param] = original if original.device.type == "cpu" else original.to("cpu")
                param.data = _merged(param.data, group, target.rows, patch.strength)
                state.weights_written += 1


_ROW_BLOCK = 256


def _merged(weight: torch.Tensor, group, rows, strength: float) -> torch.Tensor:
    """A new tensor: ``weight + strength · delta``, summed in float32 and rounded once to the
    weight's dtype. Done in row blocks so no full-size float32 copy is made (a 10240×3840 weight
    would need 157 MB of fresh pages; the blocks reuse a cache-sized buffer)."""
    out = torch.empty_like(weight)
    if group.kind == "lora":  # one fused multiply-add per block, no full-size delta tensor
        up, down, scale = lora_factors(group, rows, device=weight.device)
        alpha = strength * scale
        delta_rows = None
    else:
        delta_rows = group_delta(group, rows, device=weight.device) * strength
    for start in range(0, weight.shape[0], _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, weight.shape[0])
        block = weight[start:stop].to(torch.float32, copy=True)
        if delta_rows is None:
            block.addmm_(up[start:stop], down, alpha=alpha)
        else:
            block += delta_rows[start:stop]
        out[start:stop] = block
    return out


def _compute_patch(group, rows, strength: float) -> ComputePatch:
    if group.kind == "lora":
        up, down, scale = lora_factors(group, rows)
        return ComputePatch(up=up, down=down, alpha=strength * scale)
    return ComputePatch(up=None, down=None, alpha=1.0, delta=group_delta(group, rows) * strength)


def _restore(module, state: _MergeState, names: set[str]) -> None:
    for name in list(names):
        if name in state.compute_patched:
            module.get_submodule(name.rpartition(".")[0]).patches.clear()
            state.compute_patched.discard(name)
            continue
        original = state.originals.pop(name, None)
        if original is None:
            continue
        param = module.get_parameter(name)
        param.data = original if param.device == original.device else original.to(param.device)


__all__ = ["LoraPatch", "LoraReport", "Target", "prepare_lora", "sync_lora_stack", "merge_state"]
