"""The FLUX.1 autoencoder: BFL single file (``ae.safetensors``) or a diffusers ``vae/`` folder.

The network and the BFL-to-diffusers key conversion are diffusers' (``AutoencoderKL``,
``convert_ldm_vae_checkpoint``); the config is read from tensor shapes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from .dtypes import compute_dtype_for, parse_weight_dtype
from .errors import ZImageInputError
from .model_files import describe_foreign_keys, strip_prefix
from .compute_dtype import check_finite, choose, set_compute_dtype
from .residency import pick_device
from .safetensors_io import diffusers_component_folder, open_safetensors, require_file, stored_dtype

WHAT = "Z-Image VAE file (FLUX.1 ae.safetensors)"
SCALING_FACTOR = 0.3611
SHIFT_FACTOR = 0.1159
LATENT_CHANNELS = 16


@dataclass
class ZImageVAE:
    model: AutoencoderKL
    source: str
    compute_dtype: torch.dtype | None = None  # None: the weights' dtype

    @property
    def device(self) -> torch.device:
        return self.model.decoder.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype or self.model.decoder.conv_in.weight.dtype

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.model.config.block_out_channels) - 1)


def load_vae(path: str, weight_dtype: str | torch.dtype = "default", compute_dtype: str | torch.dtype = "auto",
             device: torch.device | None = None) -> ZImageVAE:
    """The FLUX VAE; ``compute_dtype`` "auto" is bf16 where ``device`` has it, else fp32 (the FLUX
    VAE's mid-block overflows fp16), and fp32 for an fp32 file."""
    requested = parse_weight_dtype(weight_dtype)
    require_file(path, WHAT)
    if os.path.isdir(path):
        folder = diffusers_component_folder(path, "vae", WHAT, "ae.safetensors")
        model = AutoencoderKL.from_pretrained(folder, torch_dtype=compute_dtype_for(requested or stored_dtype(folder)), local_files_only=True)
    else:
        model = _load_single_file(path, requested)
    if model.config.latent_channels != LATENT_CHANNELS:
        raise ZImageInputError(WHAT, f"a VAE with {model.config.latent_channels} latent channels", "the FLUX.1 VAE (16 channels)", "use ae.safetensors from FLUX.1 / Z-Image")
    # channels-last lets the CPU (oneDNN) and GPU convolution kernels run faster (~20 % on a CPU decode)
    model = model.to(memory_format=torch.channels_last)
    storage = model.decoder.conv_in.weight.dtype
    compute = choose(storage, compute_dtype, device or pick_device(), role="vae")
    if compute != storage:
        set_compute_dtype(model, storage, compute)
    return ZImageVAE(model=model.eval().requires_grad_(False), source=path, compute_dtype=compute)


def _count(names, pattern: str) -> int:
    return 1 + max((int(m.group(1)) for n in names if (m := re.match(pattern, n))), default=-1)


def vae_config_from_shapes(state: dict[str, torch.Tensor]) -> dict:
    """AutoencoderKL arguments for a BFL/LDM-keyed VAE, read from its shapes."""
    n_blocks = _count(state, r"encoder\.down\.(\d+)\.")
    channels = [state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(n_blocks)]
    return dict(
        in_channels=state["encoder.conv_in.weight"].shape[1],
        out_channels=state["decoder.conv_out.weight"].shape[0],
        down_block_types=["DownEncoderBlock2D"] * n_blocks,
        up_block_types=["UpDecoderBlock2D"] * n_blocks,
        block_out_channels=channels,
        layers_per_block=_count(state, r"encoder\.down\.0\.block\.(\d+)\."),
        latent_channels=state["encoder.conv_out.weight"].shape[0] // 2,
        use_quant_conv="quant_conv.weight" in state,
        use_post_quant_conv="post_quant_conv.weight" in state,
        scaling_factor=SCALING_FACTOR,
        shift_factor=SHIFT_FACTOR,
    )


def _load_single_file(path: str, requested: torch.dtype | None) -> AutoencoderKL:
    with open_safetensors(path, WHAT) as handle:
        keys = list(handle.keys())
        prefix = strip_prefix(keys, ("first_stage_model.", "vae."))
        state = {k[len(prefix):]: handle.get_tensor(k) for k in keys}
    if "encoder.conv_in.weight" not in state or "decoder.conv_out.weight" not in state:
        looks_like, use_instead = describe_foreign_keys(keys)
        raise ZImageInputError(WHAT, f"'{os.path.basename(path)}' looks like {looks_like}", "the FLUX.1 VAE (ae.safetensors)", f"use {use_instead}")
    dtype = compute_dtype_for(requested or state["encoder.conv_in.weight"].dtype)
    if "encoder.down.0.block.0.conv1.weight" in state:  # BFL / LDM naming
        config = vae_config_from_shapes(state)
        state = convert_ldm_vae_checkpoint(state, config)
    else:  # diffusers naming in one file
        config = _diffusers_config_from_shapes(state)
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    state = {k: v.to(dtype) for k, v in state.items()}
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise ZImageInputError(WHAT, f"'{os.path.basename(path)}' without {len(missing)} tensors (e.g. {missing[:3]})", "a complete FLUX.1 VAE", "download ae.safetensors again")
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=True, assign=True)
    return model


def _diffusers_config_from_shapes(state: dict[str, torch.Tensor]) -> dict:
    n_blocks = _count(state, r"encoder\.down_blocks\.(\d+)\.")
    channels = [state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(n_blocks)]
    return dict(
        in_channels=state["encoder.conv_in.weight"].shape[1], out_channels=state["decoder.conv_out.weight"].shape[0],
        down_block_types=["DownEncoderBlock2D"] * n_blocks, up_block_types=["UpDecoderBlock2D"] * n_blocks,
        block_out_channels=channels, layers_per_block=_count(state, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        latent_channels=state["encoder.conv_out.weight"].shape[0] // 2,
        use_quant_conv="quant_conv.weight" in state, use_post_quant_conv="post_quant_conv.weight" in state,
        scaling_factor=SCALING_FACTOR, shift_factor=SHIFT_FACTOR,
    )


@torch.no_grad()
def decode(vae: ZImageVAE, raw_latent: torch.Tensor, tile_size: int = 0) -> torch.Tensor:
    """ComfyUI LATENT (raw VAE space) -> IMAGE [B, H, W, 3] float in 0..1 (CPU, float32).

    ``tile_size`` > 0 decodes in overlapping tiles of that many pixels (diffusers' tiling)."""
    model = vae.model
    z = raw_latent.to(vae.device, vae.dtype).contiguous(memory_format=torch.channels_last)
    if tile_size and max(z.shape[-2:]) * vae.downscale > tile_size:
        _set_tiling(model, tile_size, vae.downscale)
        pixels = model.tiled_decode(z, return_dict=False)[0]
    else:
        pixels = model.decode(z, return_dict=False)[0]
    check_finite(pixels, 0, 1, vae.dtype, f"VAE '{os.path.basename(vae.source)}' decode")
    return ((pixels.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu()


@torch.no_grad()
def encode(vae: ZImageVAE, image: torch.Tensor, tile_size: int = 0) -> torch.Tensor:
    """IMAGE [B, H, W, 3] in 0..1 -> raw LATENT (the distribution's mean, as ComfyUI's VAEEncode)."""
    model = vae.model
    pixels = (image[..., :3].permute(0, 3, 1, 2).to(vae.device, vae.dtype) * 2 - 1).contiguous(memory_format=torch.channels_last)
    if tile_size and max(pixels.shape[-2:]) > tile_size:
        _set_tiling(model, tile_size, vae.downscale)
        dist = model.tiled_encode(pixels, return_dict=False)[0]
    else:
        dist = model.encode(pixels, return_dict=False)[0]
    latent = dist.mode()
    check_finite(latent, 0, 1, vae.dtype, f"VAE '{os.path.basename(vae.source)}' encode")
    return latent.float().cpu()


def _set_tiling(model: AutoencoderKL, tile_size: int, downscale: int) -> None:
    """diffusers' AutoencoderKL tiles at sizes held in these attributes (25 % overlap)."""
    tile_size = max(tile_size // downscale, 8) * downscale
    model.tile_sample_min_size = tile_size
    model.tile_latent_min_size = tile_size // downscale
