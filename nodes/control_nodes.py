"""ControlNet nodes (Z-Image-Turbo-Fun-Controlnet-Union) and the preprocessors that need no download."""

from __future__ import annotations

from ..loaders.controlnet import load_controlnet
from ..loaders.dtypes import WEIGHT_DTYPES
from ..loaders.errors import ZImageInputError
from ..samplers import preprocess
from ..samplers.control import ControlSpec
from . import comfy_services as services
from .types import CATEGORY, ZIMAGE_CONTROLNET, ZIMAGE_MODEL, ZIMAGE_VAE


class ZImageControlNetLoader:
    DESCRIPTION = ("Loads a Z-Image-Turbo-Fun-Controlnet-Union file from models/model_patches: 1.0, 2.0, 2.1 (8-step, 2601, 2602, Tile) "
                   "or 2.1 lite, detected from its keys. fp8_e4m3fn storage halves its memory (6.7 GB -> 3.4 GB for 2.x).")
    CATEGORY = f"{CATEGORY}/controlnet"
    RETURN_TYPES = (ZIMAGE_CONTROLNET, "STRING")
    RETURN_NAMES = ("controlnet", "version")
    OUTPUT_TOOLTIPS = ("For Z-Image Apply ControlNet.", "The detected version.")
    FUNCTION = "load"
    SEARCH_ALIASES = ["fun controlnet", "union controlnet", "model patch", "controlnet loader"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "controlnet_name": (services.list_models("model_patches"), {"tooltip": "Z-Image-Turbo-Fun-Controlnet-Union-*.safetensors in models/model_patches."}),
            "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip": "fp8_e4m3fn keeps the ControlNet in fp8 (computes in bf16): use it on 12-16 GB cards."}),
            "offload": ("BOOLEAN", {"default": False, "tooltip": "Keep the ControlNet in host memory and stream one block at a time to the GPU (slower, ~0.4 GB of VRAM instead of 3-7 GB)."}),
        }}

    def load(self, controlnet_name, weight_dtype="default", offload=False):
        cnet = load_controlnet(services.model_path("model_patches", controlnet_name), weight_dtype, offload)
        return (cnet, f"Union {cnet.version} ({cnet.control_in_dim} input channels)")


class ZImageControlNetApply:
    DESCRIPTION = ("Adds a Fun ControlNet to a Z-Image model: hint image (canny, depth, pose, scribble, gray, tile…), strength and the "
                   "part of the denoising it acts on; 2.x also inpaints (inpaint image + mask). Chain several (e.g. depth + canny).")
    CATEGORY = f"{CATEGORY}/controlnet"
    RETURN_TYPES = (ZIMAGE_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with this ControlNet added (the input model is unchanged).",)
    FUNCTION = "apply"
    SEARCH_ALIASES = ["apply controlnet", "fun controlnet", "inpaint", "control"]

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (ZIMAGE_MODEL, {"tooltip": "A Z-Image model (after LoRAs, if any)."}),
                "controlnet": (ZIMAGE_CONTROLNET, {"tooltip": "From Z-Image ControlNet Loader."}),
                "vae": (ZIMAGE_VAE, {"tooltip": "Encodes the hint image (the FLUX VAE)."}),
                "strength": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 4.0, "step": 0.01, "tooltip": "-1 = the version's default (1.0: 0.75; 2.x: 0.9). 0 = off."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the denoising where the ControlNet starts acting."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the denoising where it stops."}),
                "resize": (["crop", "stretch"], {"default": "crop", "tooltip": "How the hint image is fitted to the latent's size: crop (keep the aspect) or stretch."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The hint image (an edge map, depth map, pose, scribble, gray or low-res image)."}),
                "inpaint_image": ("IMAGE", {"tooltip": "2.x only: the image to repaint."}),
                "mask": ("MASK", {"tooltip": "2.x only: 1 where the inpaint image is repainted."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, strength=-1.0):
        if strength < 0 and strength != -1.0:
            return (f"strength: found {strength}; expected -1 (the version's default) or 0 to 4. "
                    "How to fix: negative strengths other than -1 have no meaning here; use a value from 0 (off) upwards")
        return True

    def apply(self, model, controlnet, vae, strength=-1.0, start_percent=0.0, end_percent=1.0, resize="crop", image=None, inpaint_image=None, mask=None):
        if self.VALIDATE_INPUTS(strength) is not True:  # also when run from a script, past ComfyUI's queue-time check
            raise ZImageInputError("strength", str(strength), "-1 (the version's default) or 0 to 4", "use -1, or a value from 0 upwards")
        if start_percent > end_percent:
            raise ZImageInputError("start_percent", f"{start_percent} after end_percent {end_percent}", "start ≤ end", "swap the two values")
        if image is None and not (controlnet.inpaint_channels and inpaint_image is not None):
            raise ZImageInputError("image", "no hint image", "a hint image (or, for 2.x, an inpaint image)", "connect the control image")
        if (inpaint_image is not None or mask is not None) and not controlnet.inpaint_channels:
            raise ZImageInputError("inpaint_image", f"an inpaint input for a Union {controlnet.version} ControlNet", "a 2.x ControlNet (33 input channels) for inpainting", "load Union 2.0 or 2.1, or disconnect the inpaint inputs")
        if controlnet.module.config.dim != model.module.config.dim:
            raise ZImageInputError("controlnet", f"a ControlNet of width {controlnet.module.config.dim}", f"width {model.module.config.dim}, the transformer's",
                                   "use a Z-Image Fun ControlNet with this Z-Image model")
        for name, value in (("image", image), ("inpaint_image", inpaint_image)):
            if value is not None:
                preprocess._check_image(value, name)
        spec = ControlSpec(controlnet, vae, image, controlnet.default_strength if strength == -1.0 else strength, start_percent, end_percent,
                           inpaint_image, mask, resize)
        return (model.with_control(spec),)


def _preprocessor(name, description, function, extra_inputs, aliases):
    def run(self, image, **kwargs):
        return (function(image, **kwargs),)

    return type(name, (), {
        "DESCRIPTION": description, "CATEGORY": f"{CATEGORY}/controlnet/preprocessors", "RETURN_TYPES": ("IMAGE",),
        "OUTPUT_TOOLTIPS": ("The control image, for Z-Image Apply ControlNet.",), "FUNCTION": "run", "SEARCH_ALIASES": aliases,
        "INPUT_TYPES": classmethod(lambda cls: {"required": {"image": ("IMAGE", {"tooltip": "The source image."}), **extra_inputs}}),
        "run": run,
    })


_THRESHOLD = lambda default, tip: ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": tip})  # noqa: E731

ZImageCanny = _preprocessor(
    "ZImageCanny", "Canny edge map (white edges on black), no download needed.", preprocess.canny,
    {"low_threshold": _THRESHOLD(0.2, "Weak-edge threshold, as a fraction of the strongest edge."),
     "high_threshold": _THRESHOLD(0.5, "Strong-edge threshold, as a fraction of the strongest edge.")}, ["canny", "edges", "lineart"])
ZImageGray = _preprocessor("ZImageGray", "Gray-scale control image (for the 2602 gray ControlNet).", preprocess.gray, {}, ["gray", "grayscale", "recolor"])
ZImageScribble = _preprocessor(
    "ZImageScribble", "Scribble map: dark strokes of a drawing become white lines on black (for the 2601 scribble ControlNet).", preprocess.scribble,
    {"threshold": _THRESHOLD(0.5, "Pixels darker than this become lines.")}, ["scribble", "sketch", "doodle"])
