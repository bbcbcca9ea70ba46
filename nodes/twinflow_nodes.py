"""TwinFlow-Z-Image-Turbo's few-step sampler (1–4 model calls)."""

from __future__ import annotations

from ..samplers.conditioning import features_from_conditioning
from ..samplers.latents import check_latent
from ..samplers.twinflow import DEFAULT_GAPS, MAX_NFE, sample_twinflow
from . import comfy_services as services
from .sampling_nodes import latent_samples
from .types import CATEGORY, ZIMAGE_MODEL


class ZImageTwinFlowSampler:
    DESCRIPTION = ("Few-step sampler for TwinFlow-Z-Image-Turbo (1-4 model calls; 2 is the authors' choice). Load the TwinFlow "
                   "file with Z-Image Transformer Loader; LoRAs and ControlNets apply as with the Turbo sampler.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("latent", "step1_latent")
    OUTPUT_TOOLTIPS = ("The final latent (raw VAE space).", "Step 1's prediction of the image, for inspection (decode it).")
    FUNCTION = "run"
    SEARCH_ALIASES = ["twinflow", "2 step", "few step", "turbo 2 steps"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (ZIMAGE_MODEL, {"tooltip": "A TwinFlow-Z-Image-Turbo transformer (it has t_embedder_2)."}),
            "positive": ("CONDITIONING", {"tooltip": "From Z-Image Text Encode."}),
            "latent_image": ("LATENT", {"tooltip": "Empty latent, or an encoded image with denoise < 1."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip": "Noise seed; the per-step noise is drawn from it after the start noise."}),
            "nfe": ("INT", {"default": 2, "min": 1, "max": MAX_NFE, "tooltip": "Model calls: 2 (the authors' default) or up to 4 for a little more detail."}),
            "gap_start": ("FLOAT", {"default": DEFAULT_GAPS[2][0], "min": 0.0, "max": 0.5, "step": 0.001, "tooltip": "Where the schedule starts: σ = 1 − gap_start (0.001)."}),
            "gap_end": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 0.95, "step": 0.01, "tooltip": "Where the last model call sits: σ = gap_end. -1 = the authors' value (0.6 for 1-2 calls, 0.5 for 3-4)."}),
            "stochastic_ratio": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "1 = fresh noise between calls (the authors' default); 0 = deterministic."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": "1.0 = text-to-image; lower keeps more of the input latent."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, gap_end=-1.0):
        if gap_end < 0 and gap_end != -1.0:
            return f"gap_end: found {gap_end}; expected -1 (the authors' value) or 0 to 0.95. How to fix: use -1 or a value from 0 upwards"
        return True

    def run(self, model, positive, latent_image, seed, nfe=2, gap_start=0.001, gap_end=-1.0, stochastic_ratio=1.0, denoise=1.0):
        samples = latent_samples(latent_image)
        check_latent(samples, "latent_image")
        features = features_from_conditioning(positive, model.cap_feat_dim, samples.shape[0], "positive")
        device = services.prepare_model_for_sampling(model, samples.shape[0], samples.shape[2], samples.shape[3])
        final, step1 = sample_twinflow(model, features, samples, seed, nfe, gap_start, None if gap_end == -1.0 else gap_end, stochastic_ratio, denoise,
                                       on_step=services.Progress(nfe, device), check_interrupt=services.check_interrupt)
        return ({"samples": final}, {"samples": step1})
