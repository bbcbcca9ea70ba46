"""Reading GGUF files (ComfyUI-GGUF / stable-diffusion.cpp transformers, llama.cpp text encoders).

The ``gguf`` package reads the file through a memory map; quantised tensors stay as their bytes
(a :class:`QuantizedWeight` per tensor) and are expanded per layer at compute time by diffusers'
GGUF dequantisation. F32 / F16 / BF16 tensors come back as plain tensors.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import torch

from .errors import ZImageInputError
from .quantized import GGUF_PREFIX, QuantizedWeight


def is_gguf(path: str) -> bool:
    if os.path.isdir(path):
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF"


def read_gguf(path: str, what: str) -> tuple[str, dict[str, object]]:
    """The file's architecture and its tensors by name: plain tensors, or QuantizedWeight."""
    import gguf
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    name = os.path.basename(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the gguf package raises plain ValueError / struct errors on bad files
        raise ZImageInputError(what, f"'{name}' ({os.path.getsize(path)} bytes) is not a readable GGUF file ({exc})",
                               "a whole .gguf file", "the download was probably cut off: download it again") from None
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode("utf-8", "replace") if field is not None else ""
    plain = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    tensors: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only memory map: torch warns it is not writable; nothing writes to it
        for tensor in reader.tensors:
            qtype = tensor.tensor_type
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists dims innermost first
            data = torch.from_numpy(np.asarray(tensor.data))
            if qtype in plain:
                tensors[tensor.name] = data.reshape(shape)
            elif qtype == gguf.GGMLQuantizationType.BF16:
                tensors[tensor.name] = data.view(torch.uint8).reshape(-1).view(torch.bfloat16).reshape(shape)
            elif qtype in SUPPORTED_GGUF_QUANT_TYPES:
                if len(shape) != 2:
                    tensors[tensor.name] = QuantizedWeight(GGUF_PREFIX + qtype.name, {"weight": data.view(torch.uint8).reshape(1, -1)}, (1, int(np.prod(shape))), {"quant_type": int(qtype)}).dequantize(torch.float32).reshape(shape)
                else:
                    tensors[tensor.name] = QuantizedWeight(GGUF_PREFIX + qtype.name, {"weight": data.view(torch.uint8).reshape(shape[0], -1)}, shape, {"quant_type": int(qtype)})
            else:
                raise ZImageInputError(what, f"'{name}': tensor {tensor.name} in GGUF type {qtype.name}",
                                       "Q8_0, Q6_K, Q5_K, Q4_K, Q3_K, Q2_K, Q5_0/1, Q4_0/1, F16, BF16 or F32",
                                       "use a GGUF file in one of these types")
    return arch, tensors


# llama.cpp's tensor names for Qwen3 -> transformers' Qwen3Model names (no q/k permutation for Qwen).
_LLAMA_CPP_NAMES = [
    (r"^token_embd\.weight$", "embed_tokens.weight"),
    (r"^output_norm\.weight$", "norm.weight"),
    (r"^blk\.(\d+)\.attn_q\.(weight|bias)$", r"layers.\1.self_attn.q_proj.\2"),
    (r"^blk\.(\d+)\.attn_k\.(weight|bias)$", r"layers.\1.self_attn.k_proj.\2"),
    (r"^blk\.(\d+)\.attn_v\.(weight|bias)$", r"layers.\1.self_attn.v_proj.\2"),
    (r"^blk\.(\d+)\.attn_output\.weight$", r"layers.\1.self_attn.o_proj.weight"),
    (r"^blk\.(\d+)\.attn_q_norm\.weight$", r"layers.\1.self_attn.q_norm.weight"),
    (r"^blk\.(\d+)\.attn_k_norm\.weight$", r"layers.\1.self_attn.k_norm.weight"),
    (r"^blk\.(\d+)\.attn_norm\.weight$", r"layers.\1.input_layernorm.weight"),
    (r"^blk\.(\d+)\.ffn_norm\.weight$", r"layers.\1.post_attention_layernorm.weight"),
    (r"^blk\.(\d+)\.ffn_gate\.weight$", r"layers.\1.mlp.gate_proj.weight"),
    (r"^blk\.(\d+)\.ffn_up\.weight$", r"layers.\1.mlp.up_proj.weight"),
    (r"^blk\.(\d+)\.ffn_down\.weight$", r"layers.\1.mlp.down_proj.weight"),
]


def llama_cpp_to_transformers(name: str) -> str | None:
    """A llama.cpp Qwen3 tensor name in transformers' naming; None for tensors Z-Image does not use
    (``output.weight``, the LM head)."""
    for pattern, repl in _LLAMA_CPP_NAMES:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None
