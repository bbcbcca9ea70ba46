"""ControlNet nodes (Z-Image-Turbo-Fun-Controlnet-Union) on native MODEL and VAE, and the preprocessors
that need no download. The work is in nodes/native_control.py."""

from __future__ import annotations

from comfy_api.latest import io

from ..loaders.dtypes import WEIGHT_DTYPES
from ..samplers import preprocess
from . import comfy_services as services
from .native_control import apply_controlnet, load_native_controlnet
from .types import CATEGORY, ZIMAGE_CONTROLNET

ControlNetType = io.Custom(ZIMAGE_CONTROLNET)
FOLDERS = ("model_patches", "controlnet")  # where ComfyUI's ModelPatchLoader looks, and where users also keep them


def controlnet_names() -> list[str]:
    names: list[str] = []
    for folder in FOLDERS:
        names += [n for n in services.list_models(folder) if n not in names]
    return names


def controlnet_path(name: str) -> str:
    folder = next((f for f in FOLDERS if name in services.list_models(f)), FOLDERS[0])
    return services.model_path(folder, name)


class ZImageControlNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageControlNetLoader", display_name="Z-Image ControlNet Loader", category=f"{CATEGORY}/controlnet",
            description=("Loads a Z-Image-Turbo-Fun-Controlnet-Union file from models/model_patches (or models/controlnet): 1.0, 2.0, "
                         "2.1 (8-step, 2601, 2602, Tile) or 2.1 lite, detected from its keys. fp8_e4m3fn storage halves its memory "
                         "(6.7 GB -> 3.4 GB for 2.x); ComfyUI loads or streams it with the model."),
            search_aliases=["fun controlnet", "union controlnet", "model patch", "controlnet loader"],
            inputs=[io.Combo.Input("controlnet_name", options=controlnet_names(),
                                   tooltip="Z-Image-Turbo-Fun-Controlnet-Union-*.safetensors in models/model_patches or models/controlnet."),
                    io.Combo.Input("weight_dtype", options=[k for k in WEIGHT_DTYPES if k != "fp32"], default="default",
                                   tooltip="fp8_e4m3fn keeps the ControlNet's matrices in fp8 (computed in the model's dtype): use it on 12-16 GB cards.")],
            outputs=[ControlNetType.Output(display_name="controlnet", tooltip="For Z-Image Apply ControlNet."),
                     io.String.Output(display_name="version", tooltip="The detected version.")],
        )

    @classmethod
    def execute(cls, controlnet_name, weight_dtype="default") -> io.NodeOutput:
        cnet = load_native_controlnet(controlnet_path(controlnet_name), weight_dtype)
        return io.NodeOutput(cnet, cnet.describe())


class ZImageControlNetApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageControlNetApply", display_name="Z-Image Apply ControlNet", category=f"{CATEGORY}/controlnet",
            description=("Adds a Fun ControlNet to a Z-Image MODEL: hint image (canny, depth, pose, scribble, gray, tile…), strength and the "
                         "part of the denoising it acts on; 2.x also inpaints (inpaint image + mask). Chain several (e.g. depth + canny); "
                         "works with LoRAs and any sampler."),
            search_aliases=["apply controlnet", "fun controlnet", "inpaint", "control"],
            inputs=[io.Model.Input("model", tooltip="A Z-Image MODEL (after LoRAs, if any)."),
                    ControlNetType.Input("controlnet", tooltip="From Z-Image ControlNet Loader."),
                    io.Vae.Input("vae", tooltip="Encodes the hint image (the FLUX VAE, ae.safetensors)."),
                    io.Float.Input("strength", default=-1.0, min=-1.0, max=4.0, step=0.01, tooltip="-1 = the version's default (1.0: 0.75; 2.x: 0.9). 0 = off."),
                    io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the denoising where the ControlNet starts acting."),
                    io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the denoising where it stops."),
                    io.Combo.Input("resize", options=["crop", "stretch"], default="crop",
                                   tooltip="How the hint image is fitted to the latent's size: crop (keep the aspect) or stretch."),
                    io.Image.Input("image", optional=True, tooltip="The hint image (an edge map, depth map, pose, scribble, gray or low-res image)."),
                    io.Image.Input("inpaint_image", optional=True, tooltip="2.x only: the image to repaint."),
                    io.Mask.Input("mask", optional=True, tooltip="2.x only: 1 where the inpaint image is repainted.")],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL with this ControlNet added (the input MODEL is unchanged).")],
        )

    @classmethod
    def validate_inputs(cls, strength=-1.0, start_percent=0.0, end_percent=1.0, **_):
        if strength < 0 and strength != -1.0:
            return (f"strength: found {strength}; expected -1 (the version's default) or 0 to 4. "
                    "How to fix: negative strengths other than -1 have no meaning here; use a value from 0 (off) upwards")
        if start_percent > end_percent:
            return f"start_percent: found {start_percent} after end_percent {end_percent}; expected start ≤ end. How to fix: swap the two values"
        return True

    @classmethod
    def execute(cls, model, controlnet, vae, strength=-1.0, start_percent=0.0, end_percent=1.0, resize="crop", image=None, inpaint_image=None,
                mask=None) -> io.NodeOutput:
        return io.NodeOutput(apply_controlnet(model, controlnet, vae, strength, start_percent, end_percent, resize, image, inpaint_image, mask))


def _threshold(name: str, default: float, tip: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.01, tooltip=tip)


def _preprocessor_schema(node_id, display_name, description, extra, aliases):
    return io.Schema(node_id=node_id, display_name=display_name, category=f"{CATEGORY}/controlnet/preprocessors", description=description,
                     search_aliases=aliases, inputs=[io.Image.Input("image", tooltip="The source image."), *extra],
                     outputs=[io.Image.Output(display_name="image", tooltip="The control image, for Z-Image Apply ControlNet.")])


class ZImageCanny(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _preprocessor_schema("ZImageCanny", "Z-Image Canny", "Canny edge map (white edges on black), no download needed.",
                                    [_threshold("low_threshold", 0.2, "Weak-edge threshold, as a fraction of the strongest edge."),
                                     _threshold("high_threshold", 0.5, "Strong-edge threshold, as a fraction of the strongest edge.")],
                                    ["canny", "edges", "lineart"])

    @classmethod
    def execute(cls, image, low_threshold=0.2, high_threshold=0.5) -> io.NodeOutput:
        return io.NodeOutput(preprocess.canny(image, low_threshold=low_threshold, high_threshold=high_threshold))


class ZImageGray(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _preprocessor_schema("ZImageGray", "Z-Image Gray", "Gray-scale control image (for the 2602 gray ControlNet).", [],
                                    ["gray", "grayscale", "recolor"])

    @classmethod
    def execute(cls, image) -> io.NodeOutput:
        return io.NodeOutput(preprocess.gray(image))


class ZImageScribble(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _preprocessor_schema("ZImageScribble", "Z-Image Scribble",
                                    "Scribble map: dark strokes of a drawing become white lines on black (for the 2601 scribble ControlNet).",
                                    [_threshold("threshold", 0.5, "Pixels darker than this become lines.")], ["scribble", "sketch", "doodle"])

    @classmethod
    def execute(cls, image, threshold=0.5) -> io.NodeOutput:
        return io.NodeOutput(preprocess.scribble(image, threshold=threshold))
