"""Latent conventions: ComfyUI's LATENT holds raw FLUX-VAE latents; the transformer works in
model space ``(z − shift) · scale``. Noise is made exactly as ComfyUI makes it, so one seed gives
the same start as a native KSampler."""

from __future__ import annotations

import torch

from ..loaders.errors import ZImageInputError
from ..loaders.vae import LATENT_CHANNELS, SCALING_FACTOR, SHIFT_FACTOR

__all__ = ["LATENT_CHANNELS", "SCALING_FACTOR", "SHIFT_FACTOR", "to_model_space", "to_raw_space", "comfy_noise", "empty_latent"]
PIXELS_PER_LATENT = 8
SIZE_MULTIPLE = 16  # pixels: 8× VAE down-sampling times the transformer's 2×2 patches


def to_model_space(raw: torch.Tensor) -> torch.Tensor:
    return (raw - SHIFT_FACTOR) * SCALING_FACTOR


def to_raw_space(model_latent: torch.Tensor) -> torch.Tensor:
    return model_latent / SCALING_FACTOR + SHIFT_FACTOR


def comfy_noise(shape, seed: int) -> torch.Tensor:
    """``torch.randn`` on the CPU from ``torch.manual_seed(seed)``, float32, as ComfyUI's prepare_noise."""
    return seeded_noises(shape, seed, 1)[0]


def seeded_noises(shape, seed: int, count: int) -> list[torch.Tensor]:
    """ComfyUI's start noise for ``seed`` and ``count − 1`` further draws from the same generator
    (the re-noise of the 2-step and TwinFlow samplers)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
    return [torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu") for _ in range(count)]


def empty_latent(width: int, height: int, batch_size: int = 1) -> torch.Tensor:
    """Zeros in raw space, like ComfyUI's EmptySD3LatentImage."""
    check_image_size(width, height)
    return torch.zeros(batch_size, LATENT_CHANNELS, height // PIXELS_PER_LATENT, width // PIXELS_PER_LATENT)


def check_image_size(width: int, height: int, max_size: int = 16384) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, int) and value > max_size:
            raise ZImageInputError(name, repr(value), f"at most {max_size} pixels", f"use {max_size} or less")
        if not isinstance(value, int) or value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            near = max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE) if isinstance(value, (int, float)) else 1024
            raise ZImageInputError(name, repr(value), f"a multiple of {SIZE_MULTIPLE} pixels", f"use {near}")


def check_latent(samples: torch.Tensor, what: str = "latent") -> None:
    """A LATENT the transformer can take: [B, 16, h, w] with h and w even (2×2 patches)."""
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ZImageInputError(what, f"a tensor of shape {shape}", "[batch, 16, height/8, width/8]", "make the latent with EmptySD3LatentImage or the Z-Image Empty Latent node")
    if samples.shape[1] != LATENT_CHANNELS:
        raise ZImageInputError(
            what, f"{samples.shape[1]} channels", f"{LATENT_CHANNELS} (FLUX VAE latents)",
            "use EmptySD3LatentImage or the Z-Image Empty Latent node, not the 4-channel EmptyLatentImage, and encode images with the FLUX VAE",
        )
    h, w = samples.shape[-2:]
    if h % 2 or w % 2:
        raise ZImageInputError(what, f"a latent of {w * 8}×{h * 8} pixels", f"width and height multiples of {SIZE_MULTIPLE}", "resize the image or pick a size divisible by 16")
