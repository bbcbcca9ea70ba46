"""LoRA files made from a seed, in every trainer's naming, with the weight change each one means.

For the tests and benchmarks: ``write_lora`` writes one format and returns
``{model weight name: expected delta at strength 1}`` (float32), computed by the format's own formula.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

FORMATS = ["ai-toolkit", "musubi", "musubi-comfy", "comfy", "peft", "peft-default", "diffsynth", "lokr", "lokr-lowrank", "loha"]
FUSED_FORMATS = {"musubi-comfy", "comfy"}
_LINEAR_SUFFIXES = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0")


def lora_targets(module: torch.nn.Module, blocks=("layers",)) -> dict[str, torch.nn.Linear]:
    """The Linear layers trainers adapt: attention, feed-forward and modulation of the given blocks."""
    return {name: mod for name, mod in module.named_modules()
            if isinstance(mod, torch.nn.Linear) and name.split(".")[0] in blocks and name.endswith(_LINEAR_SUFFIXES)}


def _key(fmt: str, name: str) -> str:
    comfy_name = name.replace("attention.to_out.0", "attention.out")
    return {
        "ai-toolkit": f"diffusion_model.{name}", "peft": f"transformer.{name}", "peft-default": f"transformer.{name}",
        "diffsynth": name, "musubi": "lora_unet_" + name.replace(".", "_"), "musubi-comfy": "lora_unet_" + comfy_name.replace(".", "_"),
        "comfy": f"diffusion_model.{comfy_name}", "lokr": "lycoris_" + name.replace(".", "_"),
        "lokr-lowrank": "lycoris_" + name.replace(".", "_"), "loha": "lycoris_" + name.replace(".", "_"),
    }[fmt]


def _lora_suffixes(fmt: str) -> tuple[str, str, bool]:
    """(down suffix, up suffix, writes alpha)"""
    if fmt in ("musubi", "musubi-comfy"):
        return ".lora_down.weight", ".lora_up.weight", True
    if fmt == "peft-default":
        return ".lora_A.default.weight", ".lora_B.default.weight", False
    return ".lora_A.weight", ".lora_B.weight", fmt == "comfy"


def write_lora(module: torch.nn.Module, path: str, fmt: str, rank: int = 4, seed: int = 0, alpha: float = 2.0,
               blocks=("layers",), dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    targets = lora_targets(module, blocks)
    tensors, expected = {}, {}
    done = set()
    for name, linear in targets.items():
        out_f, in_f = linear.weight.shape
        if fmt in FUSED_FORMATS and name.endswith(("to_k", "to_v")):
            continue
        if fmt in FUSED_FORMATS and name.endswith("to_q"):
            base = name[: -len(".to_q")]
            down, up = rand(rank, in_f), rand(3 * out_f, rank)
            d_s, u_s, with_alpha = _lora_suffixes(fmt)
            key = _key(fmt, f"{base}.qkv")
            tensors[key + d_s], tensors[key + u_s] = down, up
            scale = alpha / rank if with_alpha else 1.0
            if with_alpha:
                tensors[key + ".alpha"] = torch.tensor(alpha)
            for i, part in enumerate("qkv"):
                expected[f"{base}.to_{part}.weight"] = scale * up[i * out_f:(i + 1) * out_f] @ down
            done.add(base)
            continue
        key = _key(fmt, name)
        if fmt in ("lokr", "lokr-lowrank"):
            f1 = 2 if out_f % 2 == 0 and in_f % 2 == 0 else 1
            w1 = rand(f1, f1)
            if fmt == "lokr":
                w2 = rand(out_f // f1, in_f // f1)
                tensors[key + ".lokr_w1"], tensors[key + ".lokr_w2"] = w1, w2
                scale = 1.0  # full factors: alpha is not applied (ComfyUI / LyCORIS behaviour)
            else:
                w2a, w2b = rand(out_f // f1, rank), rand(rank, in_f // f1)
                tensors[key + ".lokr_w1"], tensors[key + ".lokr_w2_a"], tensors[key + ".lokr_w2_b"] = w1, w2a, w2b
                w2, scale = w2a @ w2b, alpha / rank
            tensors[key + ".alpha"] = torch.tensor(alpha)
            expected[f"{name}.weight"] = torch.kron(w1, w2) * scale
        elif fmt == "loha":
            w1a, w1b, w2a, w2b = rand(out_f, rank), rand(rank, in_f), rand(out_f, rank), rand(rank, in_f)
            tensors.update({key + ".hada_w1_a": w1a, key + ".hada_w1_b": w1b, key + ".hada_w2_a": w2a, key + ".hada_w2_b": w2b, key + ".alpha": torch.tensor(alpha)})
            expected[f"{name}.weight"] = (w1a @ w1b) * (w2a @ w2b) * (alpha / rank)
        else:
            down, up = rand(rank, in_f), rand(out_f, rank)
            d_s, u_s, with_alpha = _lora_suffixes(fmt)
            tensors[key + d_s], tensors[key + u_s] = down, up
            scale = alpha / rank if with_alpha else 1.0
            if with_alpha:
                tensors[key + ".alpha"] = torch.tensor(alpha)
            expected[f"{name}.weight"] = scale * up @ down
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, path)
    return expected
