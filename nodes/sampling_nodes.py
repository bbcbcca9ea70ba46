"""The empty latent and the Turbo / Base sampler on a native MODEL."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..loaders.errors import ZImageInputError
from ..samplers.latents import check_image_size, check_latent, empty_latent
from ..samplers.memory_budget import check_latent_fits
from .native_sampling import sample_turbo
from .types import CATEGORY

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def latent_samples(latent, what: str = "latent_image") -> torch.Tensor:
    """The checked tensor of a LATENT input (16 channels, even size)."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ZImageInputError(what, type(latent).__name__, "a LATENT (a dict with 'samples')", "connect an Empty Latent or VAE Encode node")
    check_latent(latent["samples"], what)
    return latent["samples"]


def size_inputs(default: int = 1024) -> list:
    return [io.Int.Input(name, default=default, min=16, max=MAX_RESOLUTION, step=16, tooltip="Pixels; a multiple of 16.") for name in ("width", "height")]


def seed_input(tooltip: str = "Noise seed; the same seed gives the same noise as KSampler.") -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True, tooltip=tooltip)


def denoise_input() -> io.Float.Input:
    return io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01, tooltip="1.0 = text-to-image; lower keeps more of the input latent (image-to-image).")


class ZImageEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageEmptyLatent", display_name="Z-Image Empty Latent", category=f"{CATEGORY}/latent",
            description="An empty 16-channel latent for Z-Image (as EmptySD3LatentImage), refused at queue time when the size is not a multiple of 16 or cannot fit.",
            search_aliases=["empty latent", "resolution"],
            inputs=[*size_inputs(), io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="Images per run.")],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Zeros in the FLUX VAE's raw latent space.")],
        )

    @classmethod
    def validate_inputs(cls, width, height, batch_size=1):
        # At queue time, so a batch of prompts fails before any of them runs (ComfyUI then skips its own
        # min/max check for these inputs: check_image_size covers it). ComfyUI shows the one returned text
        # under every input, so the text says which is wrong and which is fine.
        problems, fine = [], []
        for name, value in (("width", width), ("height", height)):
            try:
                check_image_size(value, 16, MAX_RESOLUTION) if name == "width" else check_image_size(16, value, MAX_RESOLUTION)
                fine.append(f"{name} {value} is fine")
            except ZImageInputError as err:
                problems.append(str(err))
        return True if not problems else "; ".join(problems + fine)

    @classmethod
    def execute(cls, width, height, batch_size=1) -> io.NodeOutput:
        check_image_size(width, height, MAX_RESOLUTION)
        check_latent_fits(width, height, batch_size)  # before the zeros are made
        return io.NodeOutput({"samples": empty_latent(width, height, batch_size)})


class ZImageTurboSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageTurboSampler", display_name="Z-Image Turbo Sampler", category=f"{CATEGORY}/sampling",
            description=("KSampler for Z-Image in one node: Turbo's 8 steps with the diffusers pipeline's schedule (shift 3, no CFG); "
                         "for Base, a negative prompt, cfg 3-5 and the CFG truncation and renormalisation KSampler lacks. Refuses a size "
                         "that cannot fit before it allocates anything. Works on any Z-Image MODEL (LoRAs, patches); seeds give KSampler's noise."),
            search_aliases=["ksampler", "turbo", "8 step", "z-image sampler", "base cfg"],
            inputs=[
                io.Model.Input("model", tooltip="A Z-Image MODEL: Load Diffusion Model, Z-Image Transformer Loader, after LoRAs or patches."),
                io.Conditioning.Input("positive", tooltip="From CLIP Text Encode with the Z-Image CLIP (Load CLIP, type lumina2)."),
                io.Latent.Input("latent_image", tooltip="An empty latent (text-to-image) or an encoded image (with denoise < 1)."),
                seed_input(),
                io.Int.Input("steps", default=8, min=1, max=200, tooltip="Model calls. Turbo: 8. Base: 25-50."),
                io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.01, tooltip="Timestep shift. Z-Image: 3.0."),
                denoise_input(),
                io.Conditioning.Input("negative", optional=True, tooltip="For Z-Image-Base with cfg > 1 (required then: an encoded empty text is the usual negative)."),
                io.Float.Input("cfg", default=1.0, min=1.0, max=30.0, step=0.1, optional=True, tooltip="1.0 = no CFG (Turbo). Base: 3-5, with a negative prompt."),
                io.Float.Input("cfg_truncation", default=1.0, min=0.0, max=1.0, step=0.01, optional=True, tooltip="CFG stops once this fraction of the denoising is done (1.0 = never)."),
                io.Float.Input("cfg_renorm", default=0.0, min=0.0, max=10.0, step=0.05, optional=True, tooltip="Caps the guided prediction's norm at this multiple of the positive one (0 = off)."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The denoised latent (raw VAE space: VAE Decode works on it).")],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, seed, steps=8, shift=3.0, denoise=1.0, negative=None, cfg=1.0,
                cfg_truncation=1.0, cfg_renorm=0.0) -> io.NodeOutput:
        latent_samples(latent_image)
        if cfg != 1.0 and negative is None:
            # diffusers' pipeline encodes an empty prompt in this case; silently dropping CFG would draw
            # another picture than the one asked for, so the wire is asked for instead
            raise ZImageInputError("negative", f"cfg {cfg} with no negative prompt connected", "a negative CONDITIONING when cfg is above 1",
                                   "connect a CLIP Text Encode to 'negative' (an empty text is the usual negative), or set cfg to 1.0 (Turbo)")
        return io.NodeOutput(sample_turbo(model, positive, negative, latent_image, seed, steps, shift, denoise, cfg, cfg_truncation, cfg_renorm))
