"""Quantised versions of the seeded demo models, written in the exact on-disk layouts users download.

- Comfy-Org mixed precision, as ComfyUI itself writes it (``comfy/ops.py``: the quantised tensor's
  own ``state_dict`` from comfy-kitchen, plus ``<layer>.comfy_quant`` as UTF-8 JSON bytes in a uint8
  tensor), or with the per-layer formats in the header's ``_quantization_metadata``, or the legacy
  ``scaled_fp8`` marker with ``<layer>.scale_weight``.
- GGUF as ComfyUI-GGUF lays it out (architecture ``lumina2``, ComfyUI tensor names, 2-D weights
  quantised, the rest F32), written with the ``gguf`` package's writer. The gguf package can
  quantise Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / BF16 itself; it cannot quantise the K-quants, so for
  those the blocks are built with seeded random codes and small scales (valid blocks, read back
  through the reference dequantiser in the tests).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

from .demo_models import diffusers_to_comfy_transformer_keys

_COMFY_LAYOUTS = {
    "float8_e4m3fn": ("TensorCoreFP8Layout", {}),
    "float8_e5m2": ("TensorCoreFP8Layout", {"dtype": torch.float8_e5m2}),
    "int8_tensorwise": ("TensorWiseINT8Layout", {"per_channel": True}),
    "nvfp4": ("TensorCoreNVFP4Layout", {}),
    "mxfp8": ("TensorCoreMXFP8Layout", {}),
}
BLOCK_LAYERS = ("layers.", "noise_refiner.", "context_refiner.")


def comfy_quant_tensor(conf: dict) -> torch.Tensor:
    """``<layer>.comfy_quant`` exactly as ComfyUI stores it."""
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


def quantize_comfy(weight: torch.Tensor, fmt: str, convrot_groupsize: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """One weight in a Comfy-Org format with comfy-kitchen's own quantiser: (tensors by suffix, comfy_quant)."""
    from comfy_kitchen.tensor import QuantizedTensor

    layout, kwargs = _COMFY_LAYOUTS[fmt]
    conf = {"format": fmt}
    if fmt == "int8_tensorwise" and convrot_groupsize and weight.shape[1] % convrot_groupsize == 0:
        kwargs = {**kwargs, "convrot": True, "convrot_groupsize": convrot_groupsize}
        conf.update(convrot=True, convrot_groupsize=convrot_groupsize)
    qt = QuantizedTensor.from_float(weight.to(torch.bfloat16), layout, **kwargs)
    return {k: v.contiguous() for k, v in qt.state_dict("weight").items()}, conf


def quantize_state(state: dict[str, torch.Tensor], fmt: str, select, convrot_groupsize: int = 0,
                   header_metadata: bool = False) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Quantise the 2-D ``.weight`` tensors whose layer ``select`` accepts; everything else in bf16."""
    out, layers = {}, {}
    for key, value in state.items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        if layer is not None and value.ndim == 2 and select(layer):
            if fmt == "scaled_fp8":  # the legacy layout: scale_weight beside each fp8 weight, a marker key
                scale = value.float().abs().max() / 448.0
                out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
                out[f"{layer}.scale_weight"] = scale.reshape(())
                continue
            tensors, conf = quantize_comfy(value, fmt, convrot_groupsize)
            out.update({f"{layer}.{suffix}": t for suffix, t in tensors.items()})
            if header_metadata:
                layers[layer] = conf
            else:
                out[f"{layer}.comfy_quant"] = comfy_quant_tensor(conf)
        else:
            out[key] = value.to(torch.bfloat16).contiguous()
    if fmt == "scaled_fp8":
        out["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    metadata = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if header_metadata else None
    return out, metadata


def write_quantized_transformer(model, path: str, fmt: str, prefix: str = "", convrot_groupsize: int = 0,
                                header_metadata: bool = False) -> str:
    """A Comfy-Org repack of ``model``: ComfyUI names, the blocks' Linear weights in ``fmt``."""
    state = diffusers_to_comfy_transformer_keys({k: v.contiguous() for k, v in model.state_dict().items()})
    out, metadata = quantize_state(state, fmt, lambda layer: layer.startswith(BLOCK_LAYERS), convrot_groupsize, header_metadata)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file({prefix + k: v for k, v in out.items()}, path, metadata=metadata)
    return path


def write_quantized_text_encoder(model, path: str, fmt: str = "float8_e4m3fn") -> str:
    """``qwen_3_4b_fp8_mixed``-style: ``model.`` names, the decoder layers' Linear weights in ``fmt``
    except layer 0's (mixed precision keeps some layers in bf16)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    out, metadata = quantize_state(state, fmt, lambda layer: layer.startswith("layers.") and not layer.startswith("layers.0."))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file({f"model.{k}": v for k, v in out.items()}, path, metadata=metadata)
    return path


# ------------------------------------------------------------------------------------- GGUF

# Where each K-quant block keeps its f16 super-block scale(s) (ggml's block structs).
_KQUANT_SCALE_BYTES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def gguf_quantize(value: np.ndarray, qtype_name: str, rng: np.random.Generator) -> tuple[np.ndarray, object]:
    """(bytes or array, raw GGML type) for one 2-D float32 weight."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    if qtype_name in _KQUANT_SCALE_BYTES:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = value.size // block
        blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
        for offset in _KQUANT_SCALE_BYTES[qtype_name]:
            blocks[:, offset:offset + 2] = np.frombuffer(np.full(n_blocks, 2e-4, dtype=np.float16).tobytes(), dtype=np.uint8).reshape(n_blocks, 2)
        return blocks.reshape(value.shape[0], -1), qtype
    return gguf.quants.quantize(value, qtype), qtype


def write_gguf(tensors: dict[str, torch.Tensor], path: str, arch: str, qtype, select, seed: int = 0,
               one_d: tuple[str, ...] = ()) -> str:
    """A GGUF file: tensors ``select`` accepts quantised in ``qtype`` (a type name, or a function of the
    tensor name: _M / _S files mix types per tensor), the rest F32."""
    import gguf

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    writer = gguf.GGUFWriter(path, arch)
    for name, value in tensors.items():
        array = value.float().numpy()
        if name in one_d:
            array = array.reshape(-1)
        qtype_name = qtype(name) if callable(qtype) else qtype
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype_name]][0]
        if array.ndim == 2 and select(name) and array.shape[1] % block == 0:
            data, raw_type = gguf_quantize(array, qtype_name, rng)
            writer.add_tensor(name, data, raw_dtype=raw_type)
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_gguf_transformer(model, path: str, qtype_name: str, one_d_pad_tokens: bool = False, seed: int = 0) -> str:
    """A ComfyUI-GGUF-style Z-Image file (``lumina2``, ComfyUI names, fused qkv)."""
    state = diffusers_to_comfy_transformer_keys({k: v.contiguous() for k, v in model.state_dict().items()})
    one_d = ("x_pad_token", "cap_pad_token") if one_d_pad_tokens else ()
    return write_gguf(state, path, "lumina2", qtype_name, lambda name: name.endswith(".weight"), seed, one_d)


def write_gguf_text_encoder(model, path: str, qtype_name: str, seed: int = 0) -> str:
    """A llama.cpp-style Qwen3 GGUF (``qwen3``, ``token_embd``, ``blk.N.attn_q.weight``…), every 2-D weight quantised."""
    state = {llama: v.contiguous() for k, v in model.state_dict().items() if (llama := _to_llama_cpp(k)) is not None}
    return write_gguf(state, path, "qwen3", qtype_name, lambda name: name.endswith(".weight"), seed)


_TO_LLAMA = [
    ("embed_tokens.weight", "token_embd.weight"), ("norm.weight", "output_norm.weight"),
    ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"), ("self_attn.k_norm", "attn_k_norm"), ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
]


def _to_llama_cpp(name: str) -> str | None:
    if name in ("embed_tokens.weight", "norm.weight"):
        return dict(_TO_LLAMA[:2])[name]
    if not name.startswith("layers."):
        return None
    _, index, rest = name.split(".", 2)
    for ours, theirs in _TO_LLAMA[2:]:
        if rest.startswith(ours + "."):
            return f"blk.{index}.{theirs}{rest[len(ours):]}"
    return None
