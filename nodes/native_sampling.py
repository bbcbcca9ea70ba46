"""The Turbo / Base sampler on a native Z-Image MODEL: ComfyUI's own sampling (``comfy.sample.sample_custom``
with its ``euler`` sampler, its conditioning, its CFG, its memory manager) walking the pack's schedule
(samplers/schedules.py: the diffusers pipeline's for text-to-image, KSampler's for image-to-image), plus
what KSampler lacks for Z-Image: Base's CFG truncation and renormalisation (samplers/turbo.py's
arithmetic, as a sampler CFG function on a clone of the MODEL) and a check, before anything is
allocated, that the run fits the device.
"""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import latent_preview
import torch

from ..loaders.errors import ZImageInputError
from ..samplers.conditioning import features_from_conditioning
from ..samplers.latents import comfy_noise
from ..samplers.memory_budget import CAPTION_TOKENS, GIB, _largest_square, _SAFETY, capacity
from ..samplers.schedules import check_steps, turbo_sigmas
from ..samplers.turbo import cfg_active, guided


def check_zimage_model(model, what: str = "model") -> None:
    """Refuse, by name, a MODEL that is not ComfyUI's Z-Image (another architecture, or not a MODEL)."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    found = type(config).__name__ if config is not None else type(model).__name__
    if found != "ZImage":
        raise ZImageInputError(what, f"a {found} model" if config is not None else f"a {found}", "a Z-Image MODEL (Turbo, Base or TwinFlow)",
                               "load Z-Image with Load Diffusion Model or the Z-Image Transformer Loader")


def check_conditioning(model, conditioning, what: str = "positive") -> None:
    """Refuse, by name, a CONDITIONING this Z-Image cannot take (another text encoder's features), before
    ComfyUI's model would fail deep inside with a shape error. Several entries (ConditioningCombine) are fine."""
    size = model.model.diffusion_model.cap_embedder[0].weight.shape[0]
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        features_from_conditioning(conditioning, size, 1, what)  # raises its error for this
    for entry in conditioning:
        tensor = entry[0] if isinstance(entry, (list, tuple)) and entry else entry
        batch = tensor.shape[0] if isinstance(tensor, torch.Tensor) and tensor.ndim == 3 else 1
        features_from_conditioning([entry], size, batch, what)


def encode_text(clip, text: str):
    """CONDITIONING of ``text`` through a native CLIP, as CLIP Text Encode makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def text_tokens(clip, text: str) -> int:
    """How many tokens ``text`` becomes in the CLIP's template (for the memory check)."""
    return sum(len(batch) for batches in clip.tokenize(text).values() for batch in batches)


def cfg_function(truncation: float, renorm: float):
    """ComfyUI's ``sampler_cfg_function``: its args hold x − x0 for the positive and negative halves
    (σ·v: the guidance arithmetic is linear, and the norm cap a ratio, so the pack's rule applies as it is)."""

    def function(args):
        cond, uncond, scale = args["cond"], args["uncond"], args["cond_scale"]
        sigma = float(args["sigma"].flatten()[0])
        if not cfg_active(sigma, scale, truncation):
            return cond
        return guided(cond, uncond, scale, renorm)

    return function


def native_sampling_bytes(model, batch: int, latent_h: int, latent_w: int, cfg: bool) -> int:
    """The activations of one NextDiT forward (the weights are ComfyUI's to place: streamed, offloaded
    or partly loaded as its memory manager decides) and the sampler's float32 latents."""
    net = model.model.diffusion_model
    dim, hidden = net.dim, net.layers[0].feed_forward.w1.weight.shape[0]
    tokens = (latent_h // 2) * (latent_w // 2) + CAPTION_TOKENS
    element = torch.empty((), dtype=model.model.get_dtype_inference()).element_size()
    effective = batch * (2 if cfg else 1)
    return int((effective * tokens * (3 * hidden + 8 * dim) * element + 4 * batch * 16 * latent_h * latent_w * 4) * _SAFETY)


def check_native_sampling_fits(model, batch: int, latent_h: int, latent_w: int, cfg: bool) -> None:
    device = comfy.model_management.get_torch_device()
    cap = capacity(device)
    if cap is None:
        return
    need = native_sampling_bytes(model, batch, latent_h, latent_w, cfg)
    if need <= cap:
        return
    side = _largest_square(lambda s: native_sampling_bytes(model, batch, s // 8, s // 8, cfg), cap)
    size = f"{latent_w * 8}×{latent_h * 8}" + (f" × batch {batch}" if batch > 1 else "") + (" with CFG" if cfg else "")
    raise ZImageInputError("latent_image (width, height, batch_size)", f"{size}, which needs ~{need / GIB:.1f} GiB on {device.type} "
                           f"({cap / GIB:.1f} GiB available); " + (f"{side}×{side} fits" if side else "no size fits"),
                           "a size that fits this machine", "lower width and height" + (", or batch_size" if batch > 1 else "")
                           + ". Nothing was allocated; the next prompt runs as usual")


def sample_turbo(model, positive, negative, latent: dict, seed: int, steps: int = 8, shift: float = 3.0, denoise: float = 1.0,
                 cfg: float = 1.0, cfg_truncation: float = 1.0, cfg_renorm: float = 0.0, disable_pbar: bool = False) -> dict:
    """A LATENT sampled on ``model`` (a Z-Image MODEL) as KSampler would with euler on this schedule;
    ``negative`` is needed (and used) only with cfg > 1."""
    check_steps(steps)
    check_zimage_model(model)
    check_conditioning(model, positive, "positive")
    if cfg != 1.0 and negative is not None:
        check_conditioning(model, negative, "negative")
    samples = latent["samples"]
    check_native_sampling_fits(model, samples.shape[0], samples.shape[-2], samples.shape[-1], cfg != 1.0)
    sigmas = turbo_sigmas(steps, shift, denoise)
    sampling_model = model
    if cfg != 1.0 and (cfg_truncation < 1.0 or cfg_renorm > 0.0):
        sampling_model = model.clone()
        sampling_model.set_model_sampler_cfg_function(cfg_function(cfg_truncation, cfg_renorm))
    samples = comfy.sample.fix_empty_latent_channels(sampling_model, samples, latent.get("downscale_ratio_spacial"))
    noise = comfy_noise(samples.shape, seed)  # the noise KSampler makes for this seed (comfy.sample.prepare_noise)
    callback = latent_preview.prepare_callback(sampling_model, steps)  # KSampler's progress bar and live previews
    out = comfy.sample.sample_custom(sampling_model, noise, cfg, comfy.samplers.sampler_object("euler"), sigmas, positive,
                                     negative if negative is not None else [], samples, noise_mask=latent.get("noise_mask"),
                                     callback=callback, disable_pbar=disable_pbar, seed=seed)
    result = latent.copy()
    result.pop("downscale_ratio_spacial", None)
    result["samples"] = out
    return result
