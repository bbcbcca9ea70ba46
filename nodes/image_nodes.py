"""VAE decode and encode."""

from __future__ import annotations

import torch

from ..loaders.errors import ZImageInputError
from ..loaders.vae import decode, encode
from ..samplers.latents import check_latent
from ..samplers.memory_budget import check_vae_fits
from . import comfy_services as services
from .sampling_nodes import latent_samples
from .types import CATEGORY, ZIMAGE_VAE

_TILE = ("INT", {"default": 0, "min": 0, "max": 4096, "step": 64, "tooltip": "0 = whole image at once. Otherwise tile size in pixels, to decode large images in less memory."})


class ZImageVAEDecode:
    DESCRIPTION = "Decodes a Z-Image latent to an image with the FLUX.1 VAE; tiled for large images."
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("Images [batch, height, width, 3] in 0..1.",)
    FUNCTION = "decode"
    SEARCH_ALIASES = ["vae decode", "latent to image"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": (ZIMAGE_VAE, {"tooltip": "From Z-Image VAE Loader."}), "samples": ("LATENT", {"tooltip": "From a Z-Image sampler or KSampler."}), "tile_size": _TILE}}

    def decode(self, vae, samples, tile_size=0):
        latent = latent_samples(samples, "samples")
        check_latent(latent, "samples")
        check_vae_fits(vae, latent.shape[2] * 8, latent.shape[3] * 8, latent.shape[0], tile_size, True, services.compute_device())
        services.to_compute_device(vae.model)
        return (decode(vae, latent, tile_size),)


class ZImageVAEEncode:
    DESCRIPTION = "Encodes an image to a Z-Image latent with the FLUX.1 VAE (for image-to-image with denoise < 1)."
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The image's latent in ComfyUI's raw VAE space.",)
    FUNCTION = "encode"
    SEARCH_ALIASES = ["vae encode", "image to latent"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": (ZIMAGE_VAE, {"tooltip": "From Z-Image VAE Loader."}), "pixels": ("IMAGE", {"tooltip": "Width and height multiples of 16."}), "tile_size": _TILE}}

    def encode(self, vae, pixels, tile_size=0):
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[-1] < 3:
            raise ZImageInputError("pixels", f"{getattr(pixels, 'shape', type(pixels).__name__)}", "an IMAGE [batch, height, width, 3]", "connect a Load Image node")
        h, w = pixels.shape[1:3]
        if h % 16 or w % 16:
            raise ZImageInputError("pixels", f"an image of {w}×{h}", "width and height multiples of 16", "crop or scale the image first (e.g. ImageScale to a multiple of 16)")
        check_vae_fits(vae, h, w, pixels.shape[0], tile_size, False, services.compute_device())
        services.to_compute_device(vae.model)
        return ({"samples": encode(vae, pixels, tile_size)},)
