"""Recognising what a weight file holds, from its key names alone.

Used to turn "this is not a Z-Image transformer" into a message that says what it is instead.
"""

from __future__ import annotations

from typing import Iterable

# (what it looks like, a key fragment that betrays it, which loader to use instead)
_FAMILIES = [
    ("a LoRA", ("lora_A", "lora_B", "lora_down", "lora_up", "lokr_w1", "hada_w1"), "the Z-Image LoRA node"),
    ("a Z-Image Fun ControlNet", ("control_layers.", "control_all_x_embedder"), "the Z-Image ControlNet loader"),
    ("a Qwen3 text encoder", ("self_attn.q_proj", "embed_tokens"), "the Z-Image Text Encoder loader (text_encoders folder)"),
    ("a VAE", ("encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks.", "encoder.conv_in"), "the Z-Image VAE loader (vae folder)"),
    ("a FLUX transformer", ("double_blocks.", "single_blocks."), "a FLUX workflow; this pack loads Z-Image only"),
    ("an SD3 transformer", ("joint_blocks.",), "an SD3 workflow; this pack loads Z-Image only"),
    ("a Stable Diffusion / SDXL checkpoint", ("input_blocks.", "conditioner.embedders", "cond_stage_model."), "a Stable Diffusion workflow; this pack loads Z-Image only"),
    ("a Qwen-Image transformer", ("transformer_blocks.0.img_mod",), "a Qwen-Image workflow; this pack loads Z-Image only"),
]


def describe_foreign_keys(keys: Iterable[str]) -> tuple[str, str]:
    """(what the keys look like, what to use instead) for a file that is not what was asked for."""
    keys = list(keys)
    for looks_like, fragments, use_instead in _FAMILIES:
        if any(frag in key for key in keys for frag in fragments):
            return looks_like, use_instead
    sample = ", ".join(sorted(keys)[:3]) or "no tensors at all"
    return f"an unknown model (keys like {sample})", "a file made for Z-Image"


def strip_prefix(keys: Iterable[str], prefixes: Iterable[str]) -> str:
    """The first prefix that every key that matters starts with, or ''."""
    keys = list(keys)
    for prefix in prefixes:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""
