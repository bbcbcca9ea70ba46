"""Model files at the full size of an architecture ComfyUI builds at a fixed size, written cheaply: the
real-server tests load Comfy-Org's native template (CLIPLoader → Qwen3-4B, always 36 layers × 2560), so
the text encoder file must have every tensor at its real shape. Its values are a seeded pool of small
random numbers written over and over (no 4-billion-number generation), norms at one: a stable, finite
encoder whose features differ per prompt, which is all the workflow runs need."""

from __future__ import annotations

import json
import struct

import torch

QWEN3_4B = dict(vocab=151936, hidden=2560, intermediate=9728, layers=36, heads=32, kv_heads=8, head_dim=128)


def qwen3_4b_shapes(layers: int = QWEN3_4B["layers"]) -> dict[str, tuple]:
    c = QWEN3_4B
    shapes = {"model.embed_tokens.weight": (c["vocab"], c["hidden"]), "model.norm.weight": (c["hidden"],)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (c["heads"] * c["head_dim"], c["hidden"]), p + "self_attn.k_proj.weight": (c["kv_heads"] * c["head_dim"], c["hidden"]),
            p + "self_attn.v_proj.weight": (c["kv_heads"] * c["head_dim"], c["hidden"]), p + "self_attn.o_proj.weight": (c["hidden"], c["heads"] * c["head_dim"]),
            p + "self_attn.q_norm.weight": (c["head_dim"],), p + "self_attn.k_norm.weight": (c["head_dim"],),
            p + "mlp.gate_proj.weight": (c["intermediate"], c["hidden"]), p + "mlp.up_proj.weight": (c["intermediate"], c["hidden"]),
            p + "mlp.down_proj.weight": (c["hidden"], c["intermediate"]),
            p + "input_layernorm.weight": (c["hidden"],), p + "post_attention_layernorm.weight": (c["hidden"],),
        })
    return shapes


def write_pooled_safetensors(path: str, shapes: dict[str, tuple], seed: int = 0, std: float = 0.02, dtype: torch.dtype = torch.bfloat16) -> str:
    """A safetensors file with ``shapes``: 1-D tensors (norms) all ones, the rest cut from a seeded pool."""
    code = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float8_e4m3fn: "F8_E4M3"}[dtype]
    size = torch.empty((), dtype=dtype).element_size()
    header, offset = {}, 0
    for name, shape in shapes.items():
        count = 1
        for d in shape:
            count *= d
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + count * size]}
        offset += count * size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    generator = torch.Generator().manual_seed(seed)
    pool = (torch.randn(8 * 2**20 + 7, generator=generator) * std).to(dtype).view(torch.uint8).numpy().tobytes()
    one = torch.ones(1, dtype=dtype).view(torch.uint8).numpy().tobytes()
    start = 0
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        for name, shape in shapes.items():
            nbytes = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            if len(shape) == 1:
                handle.write(one * (nbytes // size))
                continue
            while nbytes:  # the pool, from a moving start, so no two tensors are equal
                piece = min(nbytes, len(pool) - start)
                handle.write(pool[start:start + piece])
                nbytes -= piece
                start = (start + piece + size * 7) % (len(pool) - size * 8)
                start -= start % size
    return path
