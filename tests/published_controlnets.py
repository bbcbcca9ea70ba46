"""Tiny stand-ins for every published Z-Image-Turbo-Fun-Controlnet-Union file, written key by key from
the published layouts (VideoX-Fun's config/z_image/*.yaml and model classes, the files' key lists as
ComfyUI and diffusers load them), not from the pack's loader: the loader must find each one's version
on its own.

Per control block: attention.to_q/to_k/to_v/to_out.0 [dim, dim], attention.norm_q/norm_k [head],
attention_norm1/2, ffn_norm1/2 [dim], feed_forward.w1/w3 [ffn, dim] and w2 [dim, ffn],
adaLN_modulation.0 weight [4·dim, min(dim, 256)] and bias, after_proj [dim, dim] + bias on every control
block, before_proj [dim, dim] + bias on block 0 only. 1.0's two refiner blocks are plain blocks (no
before/after_proj). Embedder control_all_x_embedder.2-1 [dim, 4·in_dim] + bias.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

# file name → (control layers, input channels, refiner: "plain" | "trained" | "zero" | "absent")
PUBLISHED = {
    "Z-Image-Turbo-Fun-Controlnet-Union.safetensors": (6, 16, "plain"),
    "Z-Image-Turbo-Fun-Controlnet-Union-2.0.safetensors": (15, 33, "zero"),
    "Z-Image-Turbo-Fun-Controlnet-Union-2.0-no-refiner.safetensors": (15, 33, "absent"),  # 2.0 as diffusers' converter leaves it
    "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors": (15, 33, "trained"),
    "Z-Image-Turbo-Fun-Controlnet-Union-2.1-8steps.safetensors": (15, 33, "trained"),
    "Z-Image-Turbo-Fun-Controlnet-Union-2.1-2601-8steps.safetensors": (15, 33, "trained"),
    "Z-Image-Turbo-Fun-Controlnet-Union-2.1-2602-8steps.safetensors": (15, 33, "trained"),
    "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-8steps.safetensors": (15, 33, "trained"),
    "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-2601-8steps.safetensors": (15, 33, "trained"),
    "Z-Image-Turbo-Fun-Controlnet-Union-2.1-lite-2601-8steps.safetensors": (3, 33, "trained"),
    "Z-Image-Turbo-Fun-Controlnet-Union-2.1-lite-2602-8steps.safetensors": (3, 33, "trained"),
    "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-lite-2601-8steps.safetensors": (3, 33, "trained"),
}
# where each layout's hints go (VideoX-Fun's yaml control_layers_places)
PLACES = {6: [0, 5, 10, 15, 20, 25], 15: list(range(0, 30, 2)), 3: [0, 10, 20]}


def expected_version(name: str) -> str:
    layers, _, refiner = PUBLISHED[name]
    return "1.0" if layers == 6 else "2.0" if refiner in ("zero", "absent") else "2.1" if layers == 15 else "2.1 lite"


def _block(prefix: str, dim: int, heads: int, control: bool, first: bool, generator) -> dict:
    head, ffn, adaln = dim // heads, int(dim / 3 * 8), min(dim, 256)
    shapes = {"attention.to_q.weight": (dim, dim), "attention.to_k.weight": (dim, dim), "attention.to_v.weight": (dim, dim),
              "attention.to_out.0.weight": (dim, dim), "attention.norm_q.weight": (head,), "attention.norm_k.weight": (head,),
              "attention_norm1.weight": (dim,), "attention_norm2.weight": (dim,), "ffn_norm1.weight": (dim,), "ffn_norm2.weight": (dim,),
              "feed_forward.w1.weight": (ffn, dim), "feed_forward.w3.weight": (ffn, dim), "feed_forward.w2.weight": (dim, ffn),
              "adaLN_modulation.0.weight": (4 * dim, adaln), "adaLN_modulation.0.bias": (4 * dim,)}
    if control:
        shapes.update({"after_proj.weight": (dim, dim), "after_proj.bias": (dim,)})
        if first:
            shapes.update({"before_proj.weight": (dim, dim), "before_proj.bias": (dim,)})
    out = {}
    for key, shape in shapes.items():
        norm = key.endswith(("norm1.weight", "norm2.weight")) or ".norm_" in key
        out[f"{prefix}{key}"] = (1.0 + 0.05 * torch.randn(shape, generator=generator)) if norm else 0.05 * torch.randn(shape, generator=generator)
    return out


def published_state(name: str, dim: int = 64, heads: int = 2, seed: int = 0) -> dict:
    layers, in_dim, refiner = PUBLISHED[name]
    generator = torch.Generator().manual_seed(seed)
    state = {"control_all_x_embedder.2-1.weight": 0.05 * torch.randn(dim, 4 * in_dim, generator=generator),
             "control_all_x_embedder.2-1.bias": 0.05 * torch.randn(dim, generator=generator)}
    for i in range(layers):
        state.update(_block(f"control_layers.{i}.", dim, heads, True, i == 0, generator))
    if refiner != "absent":
        for i in range(2):
            block = _block(f"control_noise_refiner.{i}.", dim, heads, refiner != "plain", i == 0, generator)
            if refiner == "zero":  # 2.0 shipped its (unused) refiner untrained: zeros
                block = {k: torch.zeros_like(v) for k, v in block.items()}
            state.update(block)
    return state


def write_published(folder: str, name: str, dtype: torch.dtype = torch.bfloat16, **kw) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    save_file({k: v.to(dtype).contiguous() for k, v in published_state(name, **kw).items()}, path)
    return path


def thin_state(name: str, dim: int = 3840, heads: int = 30, seed: int = 0) -> dict:
    """A real-width stand-in (dim 3840: what ComfyUI's Z-Image needs) in one published layout that fits in a
    test's memory: the large matrices of every block are one shared tensor per kind (a 2.x ControlNet at real
    width is 6.7 GB), while each block keeps its own norms and biases (adaLN's bias: its own shift, scale and gates), so blocks and their
    order still differ. Every value is rounded through fp8 (e4m3fn), so fp8, bf16 and float32 copies hold the
    same numbers. float32; the shared tensors are the same objects under several keys (see ``cast``)."""
    layers, in_dim, refiner = PUBLISHED[name]
    generator = torch.Generator().manual_seed(seed)
    head, ffn, adaln = dim // heads, int(dim / 3 * 8), min(dim, 256)

    def rand(shape, std, mean=0.0):
        return (mean + std * torch.randn(shape, generator=generator)).to(torch.float8_e4m3fn).float()

    big_shapes = {"attention.to_q.weight": (dim, dim), "attention.to_k.weight": (dim, dim), "attention.to_v.weight": (dim, dim),
                  "attention.to_out.0.weight": (dim, dim), "feed_forward.w1.weight": (ffn, dim), "feed_forward.w3.weight": (ffn, dim),
                  "feed_forward.w2.weight": (dim, ffn), "after_proj.weight": (dim, dim), "before_proj.weight": (dim, dim),
                  "adaLN_modulation.0.weight": (4 * dim, adaln)}
    shared = {k: rand(shape, shape[1] ** -0.5) for k, shape in big_shapes.items()}

    def block(prefix, control, first):
        out = {f"{prefix}{k}": v for k, v in shared.items() if (control or "proj" not in k) and (first or "before_proj" not in k)}
        small = {"attention.norm_q.weight": (head,), "attention.norm_k.weight": (head,), "attention_norm1.weight": (dim,),
                 "attention_norm2.weight": (dim,), "ffn_norm1.weight": (dim,), "ffn_norm2.weight": (dim,)}
        out.update({f"{prefix}{k}": rand(shape, 0.05, 1.0) for k, shape in small.items()})
        out[f"{prefix}adaLN_modulation.0.bias"] = rand((4 * dim,), 0.05)
        if control:
            out[f"{prefix}after_proj.bias"] = rand((dim,), 0.05)
            if first:
                out[f"{prefix}before_proj.bias"] = rand((dim,), 0.05)
        return out

    state = {"control_all_x_embedder.2-1.weight": rand((dim, 4 * in_dim), (4 * in_dim) ** -0.5),
             "control_all_x_embedder.2-1.bias": rand((dim,), 0.05)}
    for i in range(layers):
        state.update(block(f"control_layers.{i}.", True, i == 0))
    if refiner != "absent":
        for i in range(2):
            part = block(f"control_noise_refiner.{i}.", refiner != "plain", i == 0)
            if refiner == "zero":
                part = {k: torch.zeros(()).expand(v.shape) for k, v in part.items()}
            state.update(part)
    return state


def cast(state: dict, dtype: torch.dtype) -> dict:
    """``state`` in ``dtype``, each distinct tensor converted once (shared tensors stay shared)."""
    done: dict = {}
    for v in state.values():
        if id(v) not in done:
            done[id(v)] = v.to(dtype)
    return {k: done[id(v)] for k, v in state.items()}
