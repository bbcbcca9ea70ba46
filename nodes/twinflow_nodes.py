"""TwinFlow-Z-Image-Turbo on a native MODEL: the patch that adds its second embedder, the all-in-one
sampler, and the SAMPLER / SIGMAS pair for SamplerCustom and SamplerCustomAdvanced."""

from __future__ import annotations

from comfy_api.latest import io

from ..samplers.twinflow import DEFAULT_GAPS, MAX_NFE
from . import comfy_services as services
from .native_twinflow import (
    add_twinflow,
    read_twinflow_embedder,
    sample_twinflow_native,
    twinflow_sampler,
    twinflow_schedule,
)
from .sampling_nodes import denoise_input, latent_samples, seed_input
from .types import CATEGORY

ALIASES = ["twinflow", "2 step", "few step", "turbo 2 steps"]


def _nfe_input() -> io.Int.Input:
    return io.Int.Input("nfe", default=2, min=1, max=MAX_NFE, tooltip="Model calls: 2 (the authors' default) or up to 4 for a little more detail.")


def _gap_inputs() -> list:
    return [
        io.Float.Input("gap_start", default=DEFAULT_GAPS[2][0], min=0.0, max=0.5, step=0.001, tooltip="Where the schedule starts: σ = 1 − gap_start (0.001)."),
        io.Float.Input("gap_end", default=-1.0, min=-1.0, max=0.95, step=0.01,
                       tooltip="Where the last model call sits: σ = gap_end. -1 = the authors' value (0.6 for 1-2 calls, 0.5 for 3-4)."),
    ]


def _ratio_input() -> io.Float.Input:
    return io.Float.Input("stochastic_ratio", default=1.0, min=0.0, max=1.0, step=0.05,
                          tooltip="1 = fresh noise between calls (the authors' default); 0 = deterministic.")


def _check_gap_end(gap_end) -> bool | str:
    if not isinstance(gap_end, (int, float)) or (gap_end != -1.0 and not 0 <= gap_end <= 0.95):
        return f"gap_end: found {gap_end}; expected -1 (the authors' value) or 0 to 0.95. How to fix: use -1 or a value from 0 upwards"
    return True


def _gap_end(gap_end: float) -> float | None:
    return None if gap_end == -1.0 else gap_end


class ZImageTwinFlowPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageTwinFlowPatch", display_name="Z-Image TwinFlow Patch", category=f"{CATEGORY}/sampling",
            description=("Adds TwinFlow-Z-Image-Turbo's second timestep embedder (t_embedder_2, which Load Diffusion Model drops) "
                         "to a Z-Image MODEL as a patch, so the TwinFlow samplers can run it in 2-4 steps. The base weights stay shared; "
                         "LoRAs and memory management work as usual."),
            search_aliases=ALIASES + ["t_embedder_2"],
            inputs=[
                io.Model.Input("model", tooltip="The TwinFlow-Z-Image-Turbo transformer loaded with Load Diffusion Model (or any loader), LoRAs allowed."),
                io.Combo.Input("twinflow_name", options=services.list_models("diffusion_models", with_diffusers_folders=True),
                               tooltip="The TwinFlow-Z-Image-Turbo file (bf16, fp8, GGUF or a diffusers folder); only its t_embedder_2 is read."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL with TwinFlow's second embedder, for the TwinFlow samplers.")],
        )

    @classmethod
    def execute(cls, model, twinflow_name) -> io.NodeOutput:
        embedder = read_twinflow_embedder(services.model_path("diffusion_models", twinflow_name))
        return io.NodeOutput(add_twinflow(model, embedder))


class ZImageTwinFlowSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageTwinFlowSampler", display_name="Z-Image TwinFlow Sampler", category=f"{CATEGORY}/sampling",
            description=("Few-step sampler for TwinFlow-Z-Image-Turbo (1-4 model calls; 2 is the authors' choice) on a MODEL with the "
                         "TwinFlow patch. LoRAs and model patches apply as with any sampler."),
            search_aliases=ALIASES,
            inputs=[
                io.Model.Input("model", tooltip="A TwinFlow MODEL: Z-Image TwinFlow Patch after the loader, or Z-Image Transformer Loader on the TwinFlow file."),
                io.Conditioning.Input("positive", tooltip="From CLIP Text Encode with the Z-Image CLIP (Load CLIP, type lumina2)."),
                io.Latent.Input("latent_image", tooltip="Empty latent, or an encoded image with denoise < 1."),
                seed_input("Noise seed; the per-step noise is drawn from it after the start noise."),
                _nfe_input(),
                *_gap_inputs(),
                _ratio_input(),
                denoise_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The final latent (raw VAE space)."),
                     io.Latent.Output(display_name="step1_latent", tooltip="Step 1's prediction of the image, for inspection (decode it).")],
        )

    @classmethod
    def validate_inputs(cls, gap_end=-1.0):  # naming only gap_end: ComfyUI still checks the other inputs' ranges
        return _check_gap_end(gap_end)

    @classmethod
    def execute(cls, model, positive, latent_image, seed, nfe=2, gap_start=0.001, gap_end=-1.0, stochastic_ratio=1.0, denoise=1.0) -> io.NodeOutput:
        latent_samples(latent_image)
        final, step1 = sample_twinflow_native(model, positive, latent_image, seed, nfe, gap_start, _gap_end(gap_end), stochastic_ratio, denoise)
        return io.NodeOutput(final, step1)


class ZImageTwinFlowSamplerSelect(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageTwinFlowSamplerSelect", display_name="Z-Image TwinFlow Sampler Select", category=f"{CATEGORY}/sampling",
            description=("TwinFlow's sampler as a SAMPLER for SamplerCustom / SamplerCustomAdvanced (cfg 1), with Z-Image TwinFlow "
                         "Scheduler's SIGMAS and a TwinFlow MODEL."),
            search_aliases=ALIASES + ["sampler select", "custom sampler"],
            inputs=[_ratio_input()],
            outputs=[io.Sampler.Output(display_name="sampler", tooltip="TwinFlow's few-step sampler.")],
        )

    @classmethod
    def execute(cls, stochastic_ratio=1.0) -> io.NodeOutput:
        return io.NodeOutput(twinflow_sampler(stochastic_ratio))


class ZImageTwinFlowScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageTwinFlowScheduler", display_name="Z-Image TwinFlow Scheduler", category=f"{CATEGORY}/sampling",
            description="TwinFlow's schedule (as the authors' sampler makes it) as SIGMAS for SamplerCustom / SamplerCustomAdvanced.",
            search_aliases=ALIASES + ["scheduler", "sigmas"],
            inputs=[
                io.Model.Input("model", tooltip="The TwinFlow MODEL the sigmas are for."),
                _nfe_input(),
                *_gap_inputs(),
                denoise_input(),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas", tooltip="nfe + 1 sigmas, ending at 0.")],
        )

    @classmethod
    def validate_inputs(cls, gap_end=-1.0):  # naming only gap_end: ComfyUI still checks the other inputs' ranges
        return _check_gap_end(gap_end)

    @classmethod
    def execute(cls, model, nfe=2, gap_start=0.001, gap_end=-1.0, denoise=1.0) -> io.NodeOutput:
        return io.NodeOutput(twinflow_schedule(model, nfe, gap_start, _gap_end(gap_end), denoise))
