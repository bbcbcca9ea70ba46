"""2-step step-decoupled ("Turbo++") nodes: build a step model, load/save bundles, sample in 2 steps."""

from __future__ import annotations


from ..loaders.step_decoupled import STEP2_RULES, StepSettings, from_models, load_bundle, save_bundle
from ..samplers.conditioning import features_from_conditioning
from ..samplers.latents import check_latent
from ..samplers.two_step import sample_two_step
from . import comfy_services as services
from .sampling_nodes import latent_samples
from .types import CATEGORY, ZIMAGE_MODEL, ZIMAGE_STEP_MODEL

_SIGMA_MID = ("FLOAT", {"default": 0.5, "min": 0.01, "max": 0.99, "step": 0.01,
                        "tooltip": "Where step 1 stops, before the shift (0.5 with shift 3 = σ 0.75, the Turbo schedule for 2 steps)."})
_SHIFT = ("FLOAT", {"default": 3.0, "min": 0.01, "max": 100.0, "step": 0.01, "tooltip": "Timestep shift (Z-Image: 3.0)."})
_RULE = (list(STEP2_RULES), {"default": "euler", "tooltip": "euler: deterministic flow step to σ_mid. x0_renoise: predict the image, then re-noise it to σ_mid with fresh noise from the seed."})


class ZImageTwoStepModel:
    DESCRIPTION = ("Makes a 2-step (step-decoupled) model from two Z-Image models: two transformer files, or one transformer "
                   "with a different LoRA stack per step, or the same model twice (plain Turbo in 2 steps). Only differing tensors are kept twice.")
    CATEGORY = f"{CATEGORY}/2-step"
    RETURN_TYPES = (ZIMAGE_STEP_MODEL,)
    RETURN_NAMES = ("step_model",)
    OUTPUT_TOOLTIPS = ("For the Z-Image 2-Step Sampler or Save 2-Step Bundle.",)
    FUNCTION = "build"
    SEARCH_ALIASES = ["turbo++", "2 step", "step decoupled", "two step"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "step1_model": (ZIMAGE_MODEL, {"tooltip": "Parameters for step 1 (from σ = 1)."}),
            "step2_model": (ZIMAGE_MODEL, {"tooltip": "Parameters for step 2 (from σ_mid to 0). Connect the same model for plain Turbo."}),
        }}

    def build(self, step1_model, step2_model):
        return (from_models(step1_model, step2_model),)


class ZImageStepBundleLoader:
    DESCRIPTION = "Loads a 2-step bundle (shared tensors once, per-step tensors, and its sampler settings) from models/zimage_bundles."
    CATEGORY = f"{CATEGORY}/2-step"
    RETURN_TYPES = (ZIMAGE_STEP_MODEL,)
    RETURN_NAMES = ("step_model",)
    OUTPUT_TOOLTIPS = ("For the Z-Image 2-Step Sampler.",)
    FUNCTION = "load"
    SEARCH_ALIASES = ["turbo++ bundle", "2 step bundle"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"bundle_name": (services.list_models(services.BUNDLE_FOLDER), {"tooltip": "A bundle in models/zimage_bundles."})}}

    def load(self, bundle_name):
        return (load_bundle(services.model_path(services.BUNDLE_FOLDER, bundle_name)),)


class ZImageSaveStepBundle:
    DESCRIPTION = "Saves a 2-step model as one bundle file: tensors both steps share stored once (found by content), the others per step, plus the sampler settings."
    CATEGORY = f"{CATEGORY}/2-step"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the bundle was written.",)
    OUTPUT_NODE = True
    FUNCTION = "save"
    SEARCH_ALIASES = ["save turbo++", "save bundle"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "step_model": (ZIMAGE_STEP_MODEL, {"tooltip": "From Z-Image 2-Step Model."}),
            "filename": ("STRING", {"default": "z_image_2step_bundle", "tooltip": "File name in models/zimage_bundles (.safetensors is added)."}),
            "sigma_mid": _SIGMA_MID, "shift": _SHIFT, "step2_rule": _RULE,
        }, "optional": {
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Off: an existing bundle of that name is kept and the new one gets a number (name_00001). On: replace it."}),
        }}

    def save(self, step_model, filename, sigma_mid=0.5, shift=3.0, step2_rule="euler", overwrite=False):
        path = services.new_model_path(services.BUNDLE_FOLDER, filename, overwrite)
        counts = save_bundle(step_model, path, StepSettings(sigma_mid, shift, step2_rule))
        text = f"{path}: {counts['shared']} shared tensors, {counts['per_step']} per step"
        return {"ui": {"text": [text]}, "result": (path,)}


class ZImageTwoStepSampler:
    DESCRIPTION = ("2-step step-decoupled sampler: step 1 for the whole batch with step 1's parameters, then a swap of only the "
                   "differing tensors, then step 2. Same seed, same noise as KSampler.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("latent", "step1_latent")
    OUTPUT_TOOLTIPS = ("The final latent (raw VAE space).", "Step 1's prediction of the image, for inspection (decode it).")
    FUNCTION = "run"
    SEARCH_ALIASES = ["turbo++", "2 step sampler", "two step"]

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "step_model": (ZIMAGE_STEP_MODEL, {"tooltip": "From Z-Image 2-Step Model or the bundle loader."}),
                "positive": ("CONDITIONING", {"tooltip": "From Z-Image Text Encode."}),
                "latent_image": ("LATENT", {"tooltip": "Empty latent, or an encoded image with denoise < 1."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip": "Noise seed (the re-noise rule draws from it too)."}),
                "sigma_mid": _SIGMA_MID, "shift": _SHIFT, "step2_rule": _RULE,
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": "1.0 = text-to-image."}),
                "use_bundle_settings": ("BOOLEAN", {"default": True, "tooltip": "A bundle carries its own sigma_mid, shift and rule: use them instead of the three inputs above."}),
            },
        }

    def run(self, step_model, positive, latent_image, seed, sigma_mid=0.5, shift=3.0, step2_rule="euler", denoise=1.0, use_bundle_settings=True):
        samples = latent_samples(latent_image)
        check_latent(samples, "latent_image")
        settings = step_model.settings if (use_bundle_settings and step_model.settings is not None) else StepSettings(sigma_mid, shift, step2_rule)
        settings.check()
        features = features_from_conditioning(positive, step_model.cap_feat_dim, samples.shape[0], "positive")
        device = services.prepare_model_for_sampling(step_model.steps[0], samples.shape[0], samples.shape[2], samples.shape[3])
        for view in step_model.steps[1:]:
            services.prepare_model_for_sampling(view, samples.shape[0], samples.shape[2], samples.shape[3])
        final, step1 = sample_two_step(step_model, features, samples, seed, settings, denoise,
                                       on_step=services.Progress(2, device), check_interrupt=services.check_interrupt)
        return ({"samples": final}, {"samples": step1})


