"""TwinFlow-Z-Image-Turbo on a native Z-Image MODEL (ComfyUI's NextDiT in its patcher).

Native UNETLoader drops TwinFlow's ``t_embedder_2``. Here it comes back as ComfyUI patches on a clone:
- an object patch on ``diffusion_model.t_embedder``: a module holding the original embedder (its ``mlp``
  under the same names, so the base weights stay shared and LoRA keys on it still match) and the new
  ``t_embedder_2``, built from ComfyUI's ops so ComfyUI's memory manager places its weights;
- a DIFFUSION_MODEL wrapper that hands that module the target time the sampler put in
  ``transformer_options`` for the length of one forward. Without a target the module returns the
  original embedder's output unchanged: plain sampling gives stock Z-Image.

The term matches the engine's (loaders/twinflow.py): NextDiT calls ``t_embedder((1 − σ)·time_scale)``,
so with t = input / time_scale the adaLN input is ``t_embedder(1000·t) + t_embedder_2(1000·(t_tgt − t))·|t − t_tgt|``,
summed in float64 and cast back. The sampler's arithmetic is samplers/twinflow.py's ``twinflow_loop``.
"""

from __future__ import annotations

import os

import comfy.model_management
import comfy.ops
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy.ldm.modules.diffusionmodules.mmdit import TimestepEmbedder

from ..loaders import twinflow
from ..loaders.errors import ZImageInputError
from ..samplers.latents import check_latent, comfy_noise, seeded_noises
from ..samplers.twinflow import check_stochastic_ratio, twinflow_loop, twinflow_sigmas
from .native_sampling import check_native_sampling_fits

TARGET_OPTION = "zimage_twinflow_target"  # transformer_options key: the target time t_tgt (None: off)
_WRAPPER_KEY = "zimage_twinflow"
_EMBEDDER = "diffusion_model.t_embedder"


class TwinFlowTimestepEmbedder(torch.nn.Module):
    """NextDiT's ``t_embedder`` plus TwinFlow's second term while a target time is set."""

    def __init__(self, first: torch.nn.Module, second: torch.nn.Module, time_scale: float):
        super().__init__()
        self.mlp = first.mlp  # the original's weights under their own names (shared, not copied)
        self.t_embedder_2 = second
        self.time_scale = float(time_scale)
        self.__dict__["first"] = first  # a plain reference: registering it would list its weights twice
        self.t_target: float | None = None

    def forward(self, t, dtype, **kwargs):
        out = self.first(t, dtype=dtype, **kwargs)
        if self.t_target is None:
            return out
        wide = torch.float32 if t.device.type == "mps" else torch.float64  # MPS has no float64
        gap = self.t_target - t.to(wide) / self.time_scale
        second = self.t_embedder_2(gap * self.time_scale, dtype=dtype)
        return (out.to(wide) + second.to(wide) * gap.abs()[:, None]).to(out.dtype)


def _target_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: the sampler's target time reaches the patched embedder for this call."""
    embedder = getattr(executor.class_obj, "t_embedder", None)
    if not isinstance(embedder, TwinFlowTimestepEmbedder):
        return executor(*args, **kwargs)
    previous = embedder.t_target
    embedder.t_target = kwargs.get("transformer_options", {}).get(TARGET_OPTION)
    try:
        return executor(*args, **kwargs)
    finally:
        embedder.t_target = previous


def read_twinflow_embedder(path: str) -> dict[str, torch.Tensor]:
    """``t_embedder_2``'s tensors (``t_embedder_2.mlp.0.weight`` …) from a TwinFlow file in any layout
    the pack reads; a file without it is refused by name."""
    tensors = twinflow.read_embedder(path)
    if tensors is None:
        name = os.path.basename(path.rstrip(os.sep))
        raise ZImageInputError("twinflow_name", f"'{name}', which has no t_embedder_2 (a plain Z-Image transformer)",
                               "a TwinFlow-Z-Image-Turbo file (it holds t_embedder_2)",
                               "pick the TwinFlow-Z-Image-Turbo file; for a plain Turbo model use the Turbo sampler without this patch")
    return tensors


def _z_image_embedder(model) -> torch.nn.Module:
    try:
        embedder = model.get_model_object(_EMBEDDER)
    except AttributeError:
        embedder = None
    time_scale = getattr(getattr(getattr(model, "model", None), "diffusion_model", None), "time_scale", None)
    if not hasattr(embedder, "mlp") or time_scale is None:
        raise ZImageInputError("model", f"a {type(getattr(model, 'model', model)).__name__} model", "a Z-Image MODEL (ComfyUI's NextDiT)",
                               "load Z-Image / TwinFlow-Z-Image-Turbo with Load Diffusion Model or Z-Image Transformer Loader")
    return embedder.first if isinstance(embedder, TwinFlowTimestepEmbedder) else embedder


def add_twinflow(model, embedder: dict[str, torch.Tensor]):
    """A clone of ``model`` (a native Z-Image MODEL) with TwinFlow's second embedder as ComfyUI patches;
    ``model`` is unchanged and its weights are shared."""
    sizes = twinflow.check_embedder({k: tuple(v.shape) for k, v in embedder.items()}, "t_embedder_2")
    if sizes is None:
        raise ZImageInputError("twinflow_name", "tensors without t_embedder_2", "TwinFlow's t_embedder_2 (mlp.0, mlp.2)", "pick the TwinFlow-Z-Image-Turbo file")
    out_size, mid_size = sizes
    first = _z_image_embedder(model)
    have = (first.mlp[2].out_features, first.mlp[0].out_features)
    if have != (out_size, mid_size):
        raise ZImageInputError("twinflow_name", f"a t_embedder_2 of sizes (out {out_size}, mid {mid_size})",
                               f"the MODEL's t_embedder sizes (out {have[0]}, mid {have[1]})", "pick the TwinFlow file made for this Z-Image model")
    # the file's precision (a quantised embedder comes dequantised); manual_cast ops cast to the compute dtype
    dtype = next(iter(embedder.values())).dtype
    second = TimestepEmbedder(mid_size, output_size=out_size, dtype=dtype, device=model.offload_device, operations=comfy.ops.manual_cast)
    second.load_state_dict({k[len(twinflow.KEY):]: v.to(dtype) for k, v in embedder.items()})
    second.requires_grad_(False)
    comfy.model_management.archive_model_dtypes(second)
    patched = model.clone()
    patched.add_object_patch(_EMBEDDER, TwinFlowTimestepEmbedder(first, second, model.model.diffusion_model.time_scale))
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, _WRAPPER_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, _WRAPPER_KEY, _target_wrapper)
    return patched


def is_twinflow(model) -> bool:
    try:
        return isinstance(model.get_model_object(_EMBEDDER), TwinFlowTimestepEmbedder) and bool(
            model.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, _WRAPPER_KEY))
    except AttributeError:
        return False


def require_twinflow(model) -> None:
    if not is_twinflow(model):
        raise ZImageInputError("model", "a MODEL without TwinFlow's t_embedder_2 (native Load Diffusion Model drops it)",
                               "a TwinFlow-Z-Image-Turbo MODEL",
                               "put Z-Image TwinFlow Patch (with the TwinFlow file) after the loader, or load the file with "
                               "Z-Image Transformer Loader; for a plain Turbo model use the Turbo sampler")


# ---------------------------------------------------------------- sampling


def _sample(model, x, sigmas, extra_args=None, callback=None, disable=None, stochastic_ratio: float = 1.0):
    """comfy.samplers.KSAMPLER function: ``model(x, σ)`` returns x0 (ComfyUI's convention)."""
    extra_args = {} if extra_args is None else extra_args
    patcher = getattr(getattr(model, "inner_model", None), "model_patcher", None)
    if patcher is not None:
        require_twinflow(patcher)
    options = dict(extra_args.get("model_options", {}))
    options["transformer_options"] = {**options.get("transformer_options", {}), TARGET_OPTION: 0.0}
    args = {**extra_args, "model_options": options}
    seed = extra_args.get("seed")
    # the per-step noise continues the seed's generator after the start noise, as the engine draws it
    fresh = seeded_noises(x.shape, 0 if seed is None else seed, len(sigmas))[1:]
    s_in = x.new_ones([x.shape[0]])

    def velocity(x, i):
        return (x - model(x, sigmas[i] * s_in, **args)) / sigmas[i]

    def report(i, x, x0):
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x0})

    return twinflow_loop(velocity, x, sigmas, fresh, stochastic_ratio, report)[0]


def twinflow_sampler(stochastic_ratio: float = 1.0) -> comfy.samplers.KSAMPLER:
    """The SAMPLER for SamplerCustom / SamplerCustomAdvanced (with a TwinFlow MODEL and twinflow_sigmas)."""
    check_stochastic_ratio(stochastic_ratio)
    return comfy.samplers.KSAMPLER(_sample, extra_options={"stochastic_ratio": float(stochastic_ratio)})


def twinflow_schedule(model, nfe: int = 2, gap_start: float | None = None, gap_end: float | None = None, denoise: float = 1.0) -> torch.Tensor:
    """The SIGMAS of the authors' schedule for ``nfe`` calls (samplers/twinflow.py)."""
    require_twinflow(model)
    return twinflow_sigmas(nfe, gap_start, gap_end, denoise)


def sample_twinflow_native(model, positive, latent: dict, seed: int, nfe: int = 2, gap_start: float | None = None, gap_end: float | None = None,
                           stochastic_ratio: float = 1.0, denoise: float = 1.0, disable_pbar: bool = False) -> tuple[dict, dict]:
    """(LATENT, step 1's x0 as a LATENT) sampled on a TwinFlow MODEL by ComfyUI's sampling with the
    pack's SAMPLER and SIGMAS, ComfyUI's noise for ``seed``."""
    require_twinflow(model)
    check_stochastic_ratio(stochastic_ratio)
    samples = latent["samples"]
    check_latent(samples, "latent_image")
    sigmas = twinflow_sigmas(nfe, gap_start, gap_end, denoise)
    check_native_sampling_fits(model, samples.shape[0], samples.shape[-2], samples.shape[-1], False)
    samples = comfy.sample.fix_empty_latent_channels(model, samples, latent.get("downscale_ratio_spacial"))
    noise = comfy_noise(samples.shape, seed)
    bar = comfy.utils.ProgressBar(len(sigmas) - 1)
    first = {}

    def callback(step, x0, x, total):
        if step == 0:
            first["x0"] = x0
        bar.update_absolute(step + 1, total)

    out = comfy.sample.sample_custom(model, noise, 1.0, twinflow_sampler(stochastic_ratio), sigmas, positive, [], samples,
                                     noise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=disable_pbar, seed=seed)
    step1 = model.model.process_latent_out(first["x0"].to(torch.float32)).to(device=out.device, dtype=out.dtype)
    result = latent.copy()
    result.pop("downscale_ratio_spacial", None)
    result["samples"] = out
    return result, {"samples": step1}
