"""Runs in ComfyUI's own Python (ZIMAGE_COMFYUI_PYTHON) with the ComfyUI checkout on sys.path, and
answers with ComfyUI's own numbers, as an independent reference for the pack's tests:
    python comfyui_reference.py COMFYUI_DIR < request.json > answer.json
request: {"ksampler_sigmas": [[steps, denoise, shift], …], "percent_to_sigma": [[percent, shift], …]}."""

import json
import sys

sys.argv = [sys.argv[0], "--cpu"] + sys.argv[1:]
sys.path.insert(0, sys.argv.pop(2))

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.model_sampling  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.supported_models  # noqa: E402


def z_image_model_sampling(shift: float):
    """The model sampling ComfyUI gives a Z-Image MODEL (its ZImage config's settings, shift replaced
    as ModelSamplingAuraFlow does)."""

    class Config:
        sampling_settings = {**comfy.supported_models.ZImage.sampling_settings, "shift": shift}

    return comfy.model_sampling.ModelSamplingDiscreteFlow(Config())


class _Model:  # the part of a ModelPatcher KSampler reads
    def __init__(self, shift):
        self.sampling = z_image_model_sampling(shift)
        self.model_options = {}

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.sampling


def main():
    request = json.load(sys.stdin)
    answer = {
        "ksampler_sigmas": [comfy.samplers.KSampler(_Model(shift), steps, "cpu", "euler", "simple", denoise).sigmas.tolist()
                            for steps, denoise, shift in request.get("ksampler_sigmas", [])],
        "percent_to_sigma": [float(z_image_model_sampling(shift).percent_to_sigma(percent)) for percent, shift in request.get("percent_to_sigma", [])],
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
