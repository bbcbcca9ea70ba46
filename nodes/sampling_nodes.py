"""Text encoding, empty latent and the Turbo sampler."""

from __future__ import annotations

import torch

from ..loaders.errors import ZImageInputError
from ..samplers.conditioning import features_from_conditioning
from ..samplers.latents import check_image_size, check_latent, empty_latent
from ..samplers.memory_budget import check_latent_fits
from ..samplers.schedules import check_steps
from ..samplers.text import encode_to_conditioning
from ..samplers.turbo import Guidance, sample
from . import comfy_services as services
from .types import CATEGORY, ZIMAGE_MODEL, ZIMAGE_TEXT_ENCODER

MAX_RESOLUTION = 16384


def latent_samples(latent, what: str = "latent_image") -> torch.Tensor:
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ZImageInputError(what, type(latent).__name__, "a LATENT (a dict with 'samples')", "connect an Empty Latent or VAE Encode node")
    return latent["samples"]


class ZImageTextEncode:
    DESCRIPTION = "Encodes a prompt with Qwen3-4B in Z-Image's chat template (second-to-last hidden state, valid tokens only)."
    CATEGORY = f"{CATEGORY}/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("Native CONDITIONING [1, tokens, 2560] for the Z-Image samplers.",)
    FUNCTION = "encode"
    SEARCH_ALIASES = ["prompt", "clip text encode", "z-image prompt"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": (ZIMAGE_TEXT_ENCODER, {"tooltip": "From Z-Image Text Encoder Loader."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "", "tooltip": "The prompt. Empty is allowed (an unconditional prompt)."}),
        }}

    def encode(self, text_encoder, text):
        services.to_compute_device(text_encoder.model)
        return (encode_to_conditioning(text_encoder, text),)


class ZImageEmptyLatent:
    DESCRIPTION = "An empty 16-channel latent for Z-Image (same as EmptySD3LatentImage); width and height in multiples of 16."
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("Zeros in the FLUX VAE's raw latent space.",)
    FUNCTION = "generate"
    SEARCH_ALIASES = ["empty latent", "resolution"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16, "tooltip": "Pixels; a multiple of 16."}),
            "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16, "tooltip": "Pixels; a multiple of 16."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "Images per run."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width, height):
        # Run at queue time, so a batch of prompts fails before any of them runs. (ComfyUI then skips its
        # own min/max check for these two inputs: check_image_size covers it.) ComfyUI shows the one
        # returned text under both inputs, so the text says which of the two is wrong and which is fine.
        problems, fine = [], []
        for name, value in (("width", width), ("height", height)):
            try:
                check_image_size(value, 16, MAX_RESOLUTION) if name == "width" else check_image_size(16, value, MAX_RESOLUTION)
                fine.append(f"{name} {value} is fine")
            except ZImageInputError as err:
                problems.append(str(err))
        return True if not problems else "; ".join(problems + fine)

    def generate(self, width, height, batch_size=1):
        check_image_size(width, height, MAX_RESOLUTION)
        check_latent_fits(width, height, batch_size)  # before the zeros are made
        return ({"samples": empty_latent(width, height, batch_size)},)


class ZImageTurboSampler:
    DESCRIPTION = ("Z-Image flow-matching Euler sampler. Turbo: 8 steps, shift 3, no CFG. Base: connect a negative prompt "
                   "and set cfg 3-5 with 25-50 steps. Seeds give the same noise as ComfyUI's KSampler.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent in ComfyUI's raw VAE space (native VAEDecode works on it).",)
    FUNCTION = "run"
    SEARCH_ALIASES = ["ksampler", "turbo", "8 step", "z-image sampler"]

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (ZIMAGE_MODEL, {"tooltip": "From Z-Image Transformer Loader."}),
                "positive": ("CONDITIONING", {"tooltip": "From Z-Image Text Encode, or CLIPTextEncode with a Qwen3-4B clip."}),
                "latent_image": ("LATENT", {"tooltip": "Empty latent (text-to-image) or an encoded image (with denoise < 1)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip": "Noise seed; the same seed gives the same noise as KSampler."}),
                "steps": ("INT", {"default": 8, "min": 1, "max": 200, "tooltip": "Transformer calls. Turbo: 8."}),
                "shift": ("FLOAT", {"default": 3.0, "min": 0.01, "max": 100.0, "step": 0.01, "tooltip": "Timestep shift. Z-Image: 3.0."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": "1.0 = text-to-image; lower keeps more of the input latent (image-to-image)."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "For Z-Image-Base with cfg > 1 (required then: connect an encoded empty text for a plain negative). Ignored when cfg is 1."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1, "tooltip": "1.0 = no CFG (Turbo). Base: 3-5, with a negative prompt."}),
                "cfg_truncation": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "CFG stops once this fraction of the denoising is done (1.0 = never)."}),
                "cfg_renorm": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip": "Caps the guided prediction's norm at this multiple of the positive one (0 = off)."}),
            },
        }

    def run(self, model, positive, latent_image, seed, steps=8, shift=3.0, denoise=1.0, negative=None, cfg=1.0, cfg_truncation=1.0, cfg_renorm=0.0):
        samples = latent_samples(latent_image)
        check_latent(samples, "latent_image")
        check_steps(steps)
        batch = samples.shape[0]
        features = features_from_conditioning(positive, model.cap_feat_dim, batch, "positive")
        guidance = None
        if cfg != 1.0 and negative is None:
            # diffusers' pipeline encodes an empty prompt in this case; silently dropping CFG would draw
            # another picture than the one asked for, so the wire is asked for instead
            raise ZImageInputError("negative", f"cfg {cfg} with no negative prompt connected", "a negative CONDITIONING when cfg is above 1",
                                   "connect a Z-Image Text Encode to 'negative' (an empty text is the usual negative), or set cfg to 1.0 (Turbo)")
        if cfg != 1.0:
            guidance = Guidance(cfg, cfg_truncation, cfg_renorm, features_from_conditioning(negative, model.cap_feat_dim, batch, "negative"))
        device = services.prepare_model_for_sampling(model, batch, samples.shape[2], samples.shape[3], cfg=guidance is not None)
        out = sample(model, features, samples, seed, steps, shift, denoise, guidance,
                     on_step=services.Progress(steps, device), check_interrupt=services.check_interrupt)
        return ({"samples": out},)
