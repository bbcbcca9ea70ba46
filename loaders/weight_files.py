"""One reader for every single-file weight format: safetensors (plain, fp8, Comfy-Org mixed
precision, legacy scaled fp8) and GGUF. It answers "which tensors does the file hold, and which
layers are quantised", leaving names as the file spells them; the model loaders rename."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from .gguf_files import is_gguf, read_gguf
from .quantized import QuantizedWeight, comfy_weight, layer_formats, scale_keys
from .safetensors_io import open_safetensors

# Markers and activation scales some exporters add; they carry no weights of their own.
IGNORED_KEYS = re.compile(r"(^|\.)(scaled_fp8|scale_input|input_scale|pre_quant_scale)$")


@dataclass
class FileWeights:
    plain: dict[str, torch.Tensor]
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)  # layer name (no ".weight") -> weight
    container: str = "safetensors"  # or "gguf"
    arch: str = ""  # GGUF's general.architecture

    def names(self) -> list[str]:
        """Every weight name, quantised layers as ``<layer>.weight``."""
        return list(self.plain) + [f"{layer}.weight" for layer in self.quantized]

    def renamed(self, rename) -> "FileWeights":
        """A copy with names mapped by ``rename`` (None drops the tensor)."""
        plain = {new: v for k, v in self.plain.items() if (new := rename(k)) is not None}
        quantized = {new[: -len(".weight")]: v for k, v in self.quantized.items() if (new := rename(f"{k}.weight")) is not None}
        return FileWeights(plain, quantized, self.container, self.arch)

    def describe(self) -> str:
        if not self.quantized:
            return ""
        counts: dict[str, int] = {}
        for weight in self.quantized.values():
            counts[weight.describe()] = counts.get(weight.describe(), 0) + 1
        return ", ".join(f"{name} ×{count}" for name, count in sorted(counts.items()))


def read_weights(path: str, what: str) -> FileWeights:
    """The tensors of a single file, memory-mapped; quantised layers kept as their stored bytes."""
    if is_gguf(path):
        arch, tensors = read_gguf(path, what)
        plain = {k: v for k, v in tensors.items() if not isinstance(v, QuantizedWeight)}
        quantized = {k[: -len(".weight")] if k.endswith(".weight") else k: v for k, v in tensors.items() if isinstance(v, QuantizedWeight)}
        return FileWeights(plain, quantized, "gguf", arch)
    name = os.path.basename(path)
    with open_safetensors(path, what) as handle:
        keys = list(handle.keys())
        present = set(keys)

        def read(key):
            return handle.get_tensor(key) if key in present else None

        configs = layer_formats(keys, read, handle.metadata() or {}, name)
        quantized, used = {}, set()
        for layer, conf in configs.items():
            if f"{layer}.weight" not in present:
                continue  # a config for a layer the file does not hold (ComfyUI ignores these too)
            quantized[layer] = comfy_weight(layer, conf, read, name)
            used.update((f"{layer}.weight",) + scale_keys(layer))
        plain = {k: handle.get_tensor(k) for k in keys if k not in used and not k.endswith(".comfy_quant") and not IGNORED_KEYS.search(k)}
    return FileWeights(plain, quantized)
