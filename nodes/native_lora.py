"""LoRA of every format the pack reads, as ComfyUI's own weight patches on any Z-Image MODEL
(UNETLoader's, ComfyUI-GGUF's, the pack's): partial loading, quantised weights and dynamic VRAM treat
them as they treat a native LoraLoader's.

The names are ComfyUI's: ``comfy.lora.model_lora_keys_unet`` says which LoRA names ComfyUI maps onto
which weights of this model (separate q/k/v onto slices of the fused ``qkv``; native and diffusers
spellings). The pack adds what ComfyUI's own loader lacks: every trainer's spelling resolved onto those
names (musubi's underscore-flattened diffusers names, which native LoraLoader drops; ``.default``
PEFT names; any prefix), alpha from diffusers' header metadata, a shape check per layer, and a report of
every key not applied. The tensors then go through ``comfy.lora.load_lora`` unchanged.
"""

from __future__ import annotations

import logging
import os

import comfy.lora

from ..loaders.lora_files import lokr_rank, lokr_scale, match_groups, read_lora, strip_lora_prefixes
from ..loaders.lora_merge import LoraReport

log = logging.getLogger("zimage")

# the role of each tensor of a group (loaders/lora_files.py) → the suffix ComfyUI's adapters read
_COMFY_SUFFIX = {"up": ".lora_up.weight", "down": ".lora_down.weight", "alpha": ".alpha", "diff": ".diff",
                 **{role: f".{role}" for role in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b",
                                                  "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}}


def comfy_name_table(key_map: dict) -> dict[str, str]:
    """Every spelling a LoRA file may use (prefix stripped; dotted, lower case, underscore-flattened)
    → the name in ComfyUI's key map."""
    table: dict[str, str] = {}
    for name in sorted(key_map, key=len):
        base = strip_lora_prefixes(name)
        for alias in (base, base.lower(), base.replace(".", "_").lower()):
            table.setdefault(alias, name)
    return table


def _target_shape(target, shapes: dict) -> tuple[int, int] | None:
    key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
    shape = shapes.get(key)
    if shape is None or len(shape) < 2:
        return None
    rows = offset[2] if offset is not None else shape[0]
    return (rows, shape[1])


def _comfy_tensors(group) -> dict:
    """The group's tensors as ComfyUI's adapters should read them: a LoKr whose scale ComfyUI would not
    apply (both factors full: ComfyUI uses 1, musubi-tuner's own LoKr alpha / max(w2.shape)) carries the
    pack's scale in w1 instead of an alpha."""
    tensors = dict(group.tensors)
    if group.kind == "lokr" and lokr_rank(tensors) is None and "lokr_w1" in tensors:
        scale = lokr_scale(group)
        tensors.pop("alpha", None)
        tensors["lokr_w1"] = tensors["lokr_w1"].float() * scale
    return tensors


def lora_patches(model, path: str) -> tuple[dict, LoraReport]:
    """(ComfyUI patch dict for ``ModelPatcher.add_patches``, report) of a LoRA file on ``model``."""
    lora = read_lora(path)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    table = comfy_name_table(key_map)
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}

    def locate(group):
        key = group.module_key
        name = table.get(key) or table.get(key.lower()) or table.get(key.replace(".", "_").lower())
        return None if name is None else (name, _target_shape(key_map[name], shapes))

    resolved, applied, not_applied = match_groups(lora, locate)
    converted = {name + _COMFY_SUFFIX[role]: tensor for group, name in resolved for role, tensor in _comfy_tensors(group).items()}
    patches = comfy.lora.load_lora(converted, {name: key_map[name] for _, name in resolved}, log_missing=False)
    report = LoraReport(os.path.basename(path), lora.format, applied, not_applied)
    log.info("Z-Image LoRA %s", report.text())
    return patches, report


def add_lora(model, path: str, strength: float):
    """A clone of ``model`` with the LoRA as ComfyUI weight patches (the input MODEL is unchanged)."""
    patches, report = lora_patches(model, path)
    patched = model.clone()
    patched.add_patches(patches, float(strength))
    return patched, report
