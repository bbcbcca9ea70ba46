"""Small random Z-Image models made from a seed, written in every file layout the loaders read.

The tests, the benchmarks and the demo run (no real weights at hand) use these: they go through
exactly the loading code that real files go through. Sizes are parameters, so a "thin real-width"
model (dim 3840, few layers) comes from the same functions.
"""

from __future__ import annotations

import os
import re
import shutil

import torch
from diffusers import AutoencoderKL, ZImageTransformer2DModel
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3Model

from .text_encoder import PAD_TOKEN_ID

TINY_TRANSFORMER = dict(dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[8, 12, 12])
REAL_TRANSFORMER = dict(dim=3840, n_layers=30, n_refiner_layers=2, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, axes_dims=[32, 48, 48])
TINY_TEXT_ENCODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
TINY_VAE = dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1)
QWEN_VOCAB = 151936


def _randomise(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Give every parameter seeded random values (default inits leave some at zero, which would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
            if param.ndim == 1 and "norm" in name:
                noise += 1.0  # norm gains near 1
            param.copy_(noise.to(param.dtype))


def make_transformer(seed: int = 0, **overrides) -> ZImageTransformer2DModel:
    config = {**TINY_TRANSFORMER, **overrides}
    with torch.device("cpu"):
        model = ZImageTransformer2DModel(**config)
    _randomise(model, seed)
    return model.eval().requires_grad_(False)


def diffusers_to_comfy_transformer_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ComfyUI single-file naming: fused qkv, ``attention.out``, ``q_norm``, ``x_embedder``…"""
    out = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q.weight" in key:
            base = key.replace(".to_q.weight", "")
            out[f"{base}.qkv.weight"] = torch.cat([state[f"{base}.to_q.weight"], state[f"{base}.to_k.weight"], state[f"{base}.to_v.weight"]])
            continue
        new = (key.replace(".attention.to_out.0.", ".attention.out.").replace(".attention.norm_q.", ".attention.q_norm.")
               .replace(".attention.norm_k.", ".attention.k_norm.").replace("all_x_embedder.2-1.", "x_embedder.")
               .replace("all_final_layer.2-1.", "final_layer."))
        out[new] = value
    return out


def write_transformer(model: ZImageTransformer2DModel, path: str, layout: str = "comfy", prefix: str = "",
                      dtype: torch.dtype | None = None, fp8_scaled: bool = False) -> str:
    """Write ``model`` as ``layout``: "comfy" (single file), "diffusers" (single file) or "folder"."""
    if layout == "folder":
        model.save_pretrained(path, max_shard_size="200KB" if _nbytes(model) < 50e6 else "2GB", safe_serialization=True)
        return path
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "comfy":
        state = diffusers_to_comfy_transformer_keys(state)
    if dtype is not None:
        state = _cast_for_file(state, dtype, fp8_scaled)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file({prefix + k: v for k, v in state.items()}, path)
    return path


def _cast_for_file(state, dtype, fp8_scaled):
    out = {}
    for key, value in state.items():
        if dtype == torch.float8_e4m3fn and value.ndim == 2 and key.endswith(".weight"):
            if fp8_scaled:
                scale = value.abs().max().float() / 448.0
                out[key] = (value.float() / scale).to(dtype)
                out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
            else:
                out[key] = value.to(dtype)
        elif dtype == torch.float8_e4m3fn:
            out[key] = value.to(torch.bfloat16)
        else:
            out[key] = value.to(dtype)
    if fp8_scaled:
        out["scaled_fp8"] = torch.zeros(0, dtype=dtype)
    return out


def _nbytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def make_text_encoder(seed: int = 0, **overrides) -> Qwen3Model:
    config = Qwen3Config(vocab_size=QWEN_VOCAB, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         pad_token_id=PAD_TOKEN_ID, max_position_embeddings=40960, **{**TINY_TEXT_ENCODER, **overrides})
    config._attn_implementation = "sdpa"
    model = Qwen3Model(config)
    _randomise(model, seed, std=0.2)
    return model.eval().requires_grad_(False)


def write_text_encoder(model: Qwen3Model, path: str, layout: str = "comfy", tokenizer_dir: str | None = None) -> str:
    """"comfy": ``qwen_3_4b.safetensors`` naming (``model.`` prefix); "folder": a diffusers
    ``text_encoder/`` folder (config.json + weights) with the tokenizer copied beside it."""
    if layout == "folder":
        model.save_pretrained(path, safe_serialization=True)
        if tokenizer_dir:
            _copy_tokenizer(tokenizer_dir, os.path.join(os.path.dirname(path.rstrip("/")), "tokenizer"))
        return path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def _copy_tokenizer(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))


def make_vae(seed: int = 0, **overrides) -> AutoencoderKL:
    config = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                  latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)
    config.update({**TINY_VAE, **overrides})
    model = AutoencoderKL(**config)
    _randomise(model, seed, std=0.05)
    return model.eval().requires_grad_(False)


def diffusers_to_bfl_vae_keys(state: dict[str, torch.Tensor], n_blocks: int) -> dict[str, torch.Tensor]:
    """The BFL ``ae.safetensors`` (LDM) naming of a diffusers AutoencoderKL state dict."""
    rules = [
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample."),
        (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.group_norm\.", lambda m: "mid.attn_1.norm."),
        (r"mid_block\.attentions\.0\.to_(q|k|v)\.", lambda m: f"mid.attn_1.{m[1]}."),
        (r"mid_block\.attentions\.0\.to_out\.0\.", lambda m: "mid.attn_1.proj_out."),
        (r"conv_shortcut\.", lambda m: "nin_shortcut."),
        (r"conv_norm_out\.", lambda m: "norm_out."),
    ]
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if ".attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM stores attention projections as 1×1 convs
        out[new] = value.contiguous()
    return out


def write_vae(model: AutoencoderKL, path: str, layout: str = "bfl") -> str:
    if layout == "folder":
        model.save_pretrained(path, safe_serialization=True)
        return path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(diffusers_to_bfl_vae_keys(model.state_dict(), len(model.config.block_out_channels)), path)
    return path


def write_demo_models(root: str, seed: int = 0) -> dict[str, str]:
    """The three files a text-to-image run needs, in ComfyUI's layout under ``root``, and a tokenizer."""
    from .demo_tokenizer import write_test_tokenizer

    paths = {
        "transformer": os.path.join(root, "diffusion_models", "z_image_demo.safetensors"),
        "text_encoder": os.path.join(root, "text_encoders", "qwen_3_demo.safetensors"),
        "vae": os.path.join(root, "vae", "ae_demo.safetensors"),
        "tokenizer": os.path.join(root, "tokenizer"),
    }
    if not os.path.exists(paths["transformer"]):
        write_transformer(make_transformer(seed), paths["transformer"])
    if not os.path.exists(paths["text_encoder"]):
        write_text_encoder(make_text_encoder(seed + 1), paths["text_encoder"])
    if not os.path.exists(paths["vae"]):
        write_vae(make_vae(seed + 2), paths["vae"])
    if not os.path.isdir(paths["tokenizer"]):
        write_test_tokenizer(paths["tokenizer"], seed)
    return paths


def make_controlnet(version: str, seed: int = 0, dim: int = 64, n_heads: int = 2):
    """A random Fun ControlNet in one version's layout (see loaders/controlnet.py)."""
    from diffusers import ZImageControlNetModel

    n_control, in_dim, mode = {"1.0": (6, 16, None), "2.0": (15, 33, "control_noise_refiner"), "2.1": (15, 33, "control_noise_refiner"),
                               "2.1 lite": (3, 33, "control_noise_refiner")}[version]
    div = round(30 / n_control)
    model = ZImageControlNetModel(control_layers_places=[i * div for i in range(n_control)], control_refiner_layers_places=[0, 1] if mode else None,
                                  control_in_dim=in_dim, add_control_noise_refiner=mode, dim=dim, n_heads=n_heads, n_kv_heads=n_heads)
    _randomise(model, seed, std=0.05)
    if version == "2.0":  # the released 2.0 file ships its control_noise_refiner as zeros
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.startswith("control_noise_refiner."):
                    param.zero_()
    return model.eval().requires_grad_(False)


def write_controlnet(model, path: str, dtype: torch.dtype | None = None) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file({k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in model.state_dict().items()}, path)
    return path


def make_twinflow_transformer(seed: int = 0, **overrides) -> ZImageTransformer2DModel:
    """A random TwinFlow-Z-Image transformer: the stock one plus ``t_embedder_2`` (as the authors'
    checkpoint holds it: the same class and sizes as ``t_embedder``)."""
    from diffusers.models.transformers.transformer_z_image import TimestepEmbedder

    model = make_transformer(seed, **overrides)
    first = model.t_embedder.mlp
    model.t_embedder_2 = TimestepEmbedder(first[2].out_features, mid_size=first[0].out_features)
    _randomise(model.t_embedder_2, seed + 100)
    return model.eval().requires_grad_(False)
