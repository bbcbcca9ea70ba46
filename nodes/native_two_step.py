"""The 2-step step-decoupled sampler and step bundles on native Z-Image MODELs.

Sampling: step 1 for the whole batch on ``step1_model``, then step 2 on ``step2_model``, each a ComfyUI
sampling run of its own (``comfy.sample.sample_custom`` with a ``comfy.samplers.KSAMPLER`` doing that
step's arithmetic from samplers/two_step.py), so ComfyUI's memory manager loads each MODEL: where the
two are clones of one base (two LoRA chains on one UNETLoader MODEL, or a bundle's step-2 clone), the
swap is ComfyUI's unpatch of step 1's weight patches and patch of step 2's. What that moves (ComfyUI v0.33:
``model_management.load_models_gpu`` detaches step 1's entry without unpatching; the step-2 clone's
``partially_load`` sees other patches, ``patches_uuid``):
- ``ModelPatcher`` (the CPU, ``--disable-dynamic-vram``): ``unpatch_model`` restores step 1's patched weights
  from their backups and moves the whole model to the offload device, ``load`` patches step 2's and moves
  it back — on a GPU the whole base crosses the bus twice; on the CPU only the patched weights are
  rewritten (tests/in_comfyui/test_native_two_step.py checks it);
- ``ModelPatcherDynamic`` (NVIDIA's default): ``load(dirty=True)`` marks every module's VRAM copy stale, so
  step 2's forward streams all weights again from pinned host memory.
So on a GPU ComfyUI moves the whole base at the swap, not only the differing weights;
bench/comfyui/two_step_native.py measures the bytes and seconds.

Bundles (loaders/step_decoupled.py's format, which the engine and the trainer read and write): loaded as
ONE ComfyUI model built from the shared + step-1 tensors, step 2 a clone carrying its own tensors as
"set" weight patches; saved from any two MODELs as their effective weights (weight patches applied as
ComfyUI applies them), the tensors equal in both stored once.
"""

from __future__ import annotations

import logging
import os

import comfy.float
import comfy.lora
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import torch
from comfy.quant_ops import QuantizedTensor

from ..loaders.compute_dtype import check_finite
from ..loaders.errors import ZImageInputError
from ..loaders.step_decoupled import WHAT as BUNDLE_WHAT, StepSettings, read_bundle, write_bundle_file
from ..loaders.transformer import config_from_state_dict
from ..samplers.latents import check_latent
from ..samplers.two_step import first_step, noises, second_step, two_step_sigmas
from .native_sampling import check_native_sampling_fits, check_zimage_model

log = logging.getLogger("zimage")

PREFIX = "diffusion_model."
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _velocity(denoiser, extra_args: dict):
    """The flow velocity from ComfyUI's wrapped model, which returns the denoised x0: v = (x − x0) / σ."""

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        denoised = denoiser(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype), **extra_args)
        return (x - denoised) / sigma

    return velocity


def sample_two_step_native(step1_model, step2_model, positive, latent: dict, seed: int, settings: StepSettings,
                           denoise: float = 1.0, disable_pbar: bool = False) -> tuple[dict, dict]:
    """(final LATENT, step 1's x0 prediction as a LATENT). Noise as KSampler makes it for ``seed``; the
    x0_renoise rule's noise is the next draw of the same generator (as the engine draws it)."""
    check_zimage_model(step1_model, "step1_model")
    check_zimage_model(step2_model, "step2_model")
    settings = StepSettings(float(settings.sigma_mid), float(settings.shift), settings.step2_rule).check()
    samples = latent["samples"]
    check_latent(samples, "latent_image")
    sigmas = two_step_sigmas(settings, denoise)
    for model in (step1_model, step2_model):
        check_native_sampling_fits(model, samples.shape[0], samples.shape[-2], samples.shape[-1], False)
    samples = comfy.sample.fix_empty_latent_channels(step1_model, samples, latent.get("downscale_ratio_spacial"))
    noise, renoise = noises(samples.shape, seed)
    s0, s1 = float(sigmas[0]), float(sigmas[1])
    state: dict = {}
    bar = comfy.utils.ProgressBar(2)

    def step1_function(model, x, step_sigmas, extra_args=None, callback=None, disable=None):
        x_mid, x0 = first_step(_velocity(model, extra_args or {}), x, s0, s1, settings.step2_rule, renoise)
        check_finite(x0, 0, 2, step1_model.model.get_dtype_inference())
        state["x_mid"], state["x0"] = x_mid, x0
        if callback is not None:
            callback({"i": 0, "denoised": x0, "x": x, "sigma": step_sigmas[0], "sigma_hat": step_sigmas[0]})
        return x_mid

    def step2_function(model, x, step_sigmas, extra_args=None, callback=None, disable=None):
        # ComfyUI hands this run x noised from the latent at σ_mid; step 2 continues from step 1's x instead
        x0 = second_step(_velocity(model, extra_args or {}), state["x_mid"].to(x.device, x.dtype), s1)
        check_finite(x0, 1, 2, step2_model.model.get_dtype_inference())
        if callback is not None:
            callback({"i": 0, "denoised": x0, "x": x, "sigma": step_sigmas[0], "sigma_hat": step_sigmas[0]})
        return x0

    def progress(offset):
        return lambda step, x0, x, total: bar.update_absolute(offset + 1, 2)

    common = {"noise_mask": latent.get("noise_mask"), "disable_pbar": disable_pbar, "seed": seed}
    comfy.sample.sample_custom(step1_model, noise, 1.0, comfy.samplers.KSAMPLER(step1_function), sigmas[:2], positive, [], samples,
                               callback=progress(0), **common)
    comfy.model_management.throw_exception_if_processing_interrupted()
    final = comfy.sample.sample_custom(step2_model, noise, 1.0, comfy.samplers.KSAMPLER(step2_function), sigmas[1:], positive, [], samples,
                                       callback=progress(1), **common)
    step1 = step1_model.model.process_latent_out(state["x0"].float()).to(device=comfy.model_management.intermediate_device(),
                                                                          dtype=comfy.model_management.intermediate_dtype())
    out, mid = latent.copy(), latent.copy()
    for result in (out, mid):
        result.pop("downscale_ratio_spacial", None)
    out["samples"], mid["samples"] = final, step1
    return out, mid


def swap_keys(step1_model, step2_model) -> dict:
    """What the swap between the two MODELs has to change, by ComfyUI's bookkeeping: the weights whose
    patch lists differ ({"keys": […], "bytes": …}; patches a common ancestor added are the same entries
    in both clones); ``shared_base``: the two are clones of one model (else ComfyUI holds two models)."""
    if not step1_model.is_clone(step2_model):
        return {"shared_base": False, "keys": [], "bytes": 0}

    def same(a, b):
        return a is b or (a is not None and b is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b)))

    state = step1_model.model.state_dict()
    keys = sorted(k for k in set(step1_model.patches) | set(step2_model.patches) if not same(step1_model.patches.get(k), step2_model.patches.get(k)))
    return {"shared_base": True, "keys": keys, "bytes": sum(state[k].numel() * state[k].element_size() for k in keys if k in state)}


# --- bundles ---------------------------------------------------------------------------------------

def load_step_bundle_native(path: str, model_options: dict | None = None):
    """(step-1 MODEL, step-2 MODEL, the bundle's StepSettings): ComfyUI's model built once from the shared +
    step-1 tensors (``model_options`` as comfy.sd.load_diffusion_model takes them, e.g. a weight dtype);
    step 2 a clone with its own tensors as "set" patches (mapped onto ComfyUI's names by ComfyUI's own
    Z-Image key table: a diffusers q, k or v onto its rows of the fused qkv)."""
    parts, settings = read_bundle(path)
    state = {**parts["shared"], **parts["step1"]}
    try:
        model = comfy.sd.load_diffusion_model_state_dict(state, model_options=dict(model_options or {}))
    except Exception as exc:  # ComfyUI's own error for a state dict it cannot build
        raise ZImageInputError(BUNDLE_WHAT, f"'{os.path.basename(path)}', whose tensors ComfyUI could not build a model from ({exc})",
                               "a Z-Image 2-step bundle", "re-save the bundle") from None
    if model is None:
        raise ZImageInputError(BUNDLE_WHAT, f"'{os.path.basename(path)}', which ComfyUI does not recognise as a Z-Image", "a Z-Image 2-step bundle", "re-save the bundle")
    check_zimage_model(model, BUNDLE_WHAT)
    key_map = comfy.utils.z_image_to_diffusers(model.model.model_config.unet_config, output_prefix=PREFIX)
    patches = {}
    for name, tensor in parts["step2"].items():
        target = key_map.get(name)
        if target is None:
            raise ZImageInputError(BUNDLE_WHAT, f"a step-2 tensor '{name}' that ComfyUI's Z-Image has no weight for",
                                   "Z-Image transformer tensors", "re-save the bundle")
        patches[target if isinstance(target, str) else (target[0], target[1])] = ("set", (tensor,))
    step2 = model.clone()
    applied = step2.add_patches(patches, 1.0)
    if len(applied) != len(patches):
        missing = sorted(str(k) for k in set(patches) - set(applied))
        raise ZImageInputError(BUNDLE_WHAT, f"{len(missing)} step-2 tensors ComfyUI's model has no weight for (e.g. {missing[:2]})",
                               "Z-Image transformer tensors", "re-save the bundle")
    log.info("Z-Image 2-step bundle %s: %d shared tensors, %d per step", os.path.basename(path), len(parts["shared"]), len(parts["step2"]))
    return model, step2, settings


def effective_weights(model, what: str) -> dict[str, torch.Tensor]:
    """The MODEL's weights as ComfyUI computes with them (ComfyUI names without the prefix): each
    patched weight from its original (the backup, if a clone is patched in now) through
    ``comfy.lora.calculate_weight`` in ComfyUI's LoRA dtype, rounded to the stored dtype as ComfyUI rounds it."""
    if model.object_patches:
        raise ZImageInputError(what, f"a MODEL with object patches ({', '.join(sorted(model.object_patches))})",
                               "a MODEL whose changes are weight patches (LoRAs, bundles)", "save the bundle from the MODELs before such patches")
    out = {}
    compute = comfy.model_management.lora_compute_dtype(model.load_device)
    for key, entries in model.get_key_patches(PREFIX).items():
        weight, convert = entries[0]
        if weight.dtype not in _FLOAT_DTYPES or isinstance(weight, QuantizedTensor):
            raise ZImageInputError(what, f"a quantised MODEL ({key}: {type(weight).__name__} {weight.dtype})", "a bf16, fp16 or fp32 MODEL",
                                   "load the transformer with weight_dtype default to save a bundle")
        if len(entries) > 1:
            temp = convert(weight.to(device="cpu", dtype=compute, copy=True), inplace=True)
            temp = comfy.lora.calculate_weight(entries[1:], temp, key)
            weight = comfy.float.stochastic_rounding(temp, weight.dtype, seed=comfy.utils.string_to_seed(key))
        out[key[len(PREFIX):]] = weight.detach().cpu()
    return out


def _to_diffusers_names(state: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    return convert_z_image_transformer_checkpoint_to_diffusers(dict(state))


def save_step_bundle_native(step1_model, step2_model, path: str, settings: StepSettings) -> dict:
    """Write the bundle of two MODELs (their effective weights, diffusers names; the tensors equal in both
    once). Returns {"shared": n, "per_step": n}."""
    settings = StepSettings(float(settings.sigma_mid), float(settings.shift), settings.step2_rule).check()
    check_zimage_model(step1_model, "step1_model")
    check_zimage_model(step2_model, "step2_model")
    first = _to_diffusers_names(effective_weights(step1_model, "step1_model"))
    second = _to_diffusers_names(effective_weights(step2_model, "step2_model"))
    return write_bundle_file(first, second, path, settings, config_from_state_dict(first, path))
