"""2-step step-decoupled ("Turbo++") nodes on native MODELs: the sampler (one MODEL per step), the
bundle loader and the bundle saver. The work is in native_two_step.py."""

from __future__ import annotations

from comfy_api.latest import io

from ..loaders.step_decoupled import STEP2_RULES, StepSettings
from . import comfy_services as services
from .native_two_step import load_step_bundle_native, sample_two_step_native, save_step_bundle_native
from .sampling_nodes import denoise_input, latent_samples, seed_input
from .types import CATEGORY

ALIASES = ["turbo++", "2 step", "two step", "step decoupled"]


def settings_inputs() -> list:
    return [
        io.Float.Input("sigma_mid", default=0.5, min=0.01, max=0.99, step=0.01,
                       tooltip="Where step 1 stops, before the shift (0.5 with shift 3 = σ 0.75, the Turbo schedule for 2 steps). "
                               "A bundle loader's sigma_mid output can be connected here."),
        io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.01, tooltip="Timestep shift (Z-Image: 3.0)."),
        io.Combo.Input("step2_rule", options=list(STEP2_RULES), default="euler",
                       tooltip="euler: deterministic flow step to σ_mid. x0_renoise: predict the image, then re-noise it to σ_mid with fresh noise from the seed."),
    ]


class ZImageTwoStepSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageTwoStepSampler", display_name="Z-Image 2-Step Sampler", category=f"{CATEGORY}/sampling",
            description=("2-step step-decoupled sampler: step 1 for the whole batch on step1_model, then step 2 on step2_model. Connect two "
                         "files, one model with a LoRA chain per step, or the bundle loader's two outputs. Same seed, same noise as KSampler."),
            search_aliases=ALIASES + ["2 step sampler"],
            inputs=[
                io.Model.Input("step1_model", tooltip="The model for step 1 (from σ = 1 to σ_mid)."),
                io.Model.Input("step2_model", tooltip="The model for step 2 (from σ_mid to the image). Connect the same model for plain Turbo in 2 steps."),
                io.Conditioning.Input("positive", tooltip="The prompt (CLIP Text Encode with the Z-Image text encoder)."),
                io.Latent.Input("latent_image", tooltip="An empty latent, or an encoded image with denoise < 1."),
                seed_input("Noise seed: KSampler's noise for it; the x0_renoise rule draws its re-noise from it too."),
                *settings_inputs(),
                denoise_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The final latent (decode it with VAE Decode)."),
                     io.Latent.Output(display_name="step1_latent", tooltip="Step 1's prediction of the image, for inspection (decode it).")],
        )

    @classmethod
    def execute(cls, step1_model, step2_model, positive, latent_image, seed, sigma_mid=0.5, shift=3.0, step2_rule="euler",
                denoise=1.0) -> io.NodeOutput:
        latent_samples(latent_image)
        final, step1 = sample_two_step_native(step1_model, step2_model, positive, latent_image, seed,
                                              StepSettings(sigma_mid, shift, step2_rule), denoise)
        return io.NodeOutput(final, step1)


class ZImageStepBundleLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageStepBundleLoader", display_name="Z-Image 2-Step Bundle Loader", category=f"{CATEGORY}/loaders",
            description=("Loads a 2-step bundle from models/zimage_bundles as two MODELs sharing one base (step 2 carries only its own "
                         "tensors), plus the sampler settings stored in the bundle: connect them to the 2-Step Sampler."),
            search_aliases=ALIASES + ["bundle", "load bundle"],
            inputs=[io.Combo.Input("bundle_name", options=services.list_models(services.BUNDLE_FOLDER),
                                   tooltip="A bundle in models/zimage_bundles (written by Save 2-Step Bundle or zimage-distill).")],
            outputs=[
                io.Model.Output(display_name="step1_model", tooltip="For the 2-Step Sampler's step1_model."),
                io.Model.Output(display_name="step2_model", tooltip="For the 2-Step Sampler's step2_model."),
                io.Float.Output(display_name="sigma_mid", tooltip="The σ_mid the bundle was made for (connect to the sampler's sigma_mid)."),
                io.Float.Output(display_name="shift", tooltip="The shift the bundle was made for (connect to the sampler's shift)."),
                io.Combo.Output(display_name="step2_rule", options=list(STEP2_RULES), tooltip="The step-2 rule the bundle was made for (connect to the sampler's step2_rule)."),
            ],
        )

    @classmethod
    def execute(cls, bundle_name) -> io.NodeOutput:
        step1, step2, settings = load_step_bundle_native(services.model_path(services.BUNDLE_FOLDER, bundle_name))
        return io.NodeOutput(step1, step2, float(settings.sigma_mid), float(settings.shift), settings.step2_rule)


class ZImageSaveStepBundle(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageSaveStepBundle", display_name="Z-Image Save 2-Step Bundle", category=f"{CATEGORY}/loaders",
            description=("Saves two MODELs (LoRAs included) as one 2-step bundle in models/zimage_bundles: the weights both steps share "
                         "stored once, the others per step, with the sampler settings. The pack's engine and trainer read it too."),
            search_aliases=ALIASES + ["save bundle"],
            inputs=[
                io.Model.Input("step1_model", tooltip="The model for step 1 (e.g. the base with step 1's LoRAs)."),
                io.Model.Input("step2_model", tooltip="The model for step 2 (e.g. the same base with step 2's LoRAs)."),
                io.String.Input("filename", default="z_image_2step_bundle", tooltip="File name in models/zimage_bundles (.safetensors is added)."),
                *settings_inputs(),
                io.Boolean.Input("overwrite", default=False, tooltip="Off: an existing bundle of that name is kept and the new one gets a number (name_00001). On: replace it."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the bundle was written.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, step1_model, step2_model, filename, sigma_mid=0.5, shift=3.0, step2_rule="euler", overwrite=False) -> io.NodeOutput:
        settings = StepSettings(sigma_mid, shift, step2_rule).check()
        path = services.new_model_path(services.BUNDLE_FOLDER, filename, overwrite)
        counts = save_step_bundle_native(step1_model, step2_model, path, settings)
        text = f"{path}: {counts['shared']} shared tensors, {counts['per_step']} per step"
        return io.NodeOutput(path, ui={"text": [text]})
