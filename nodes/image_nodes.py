"""Pictures with how they were made: save with metadata, read it back."""

from __future__ import annotations

import json
import os

import torch
from comfy_api.latest import io

from ..loaders.confined_paths import check_output_prefix
from ..loaders.errors import ZImageInputError
from ..loaders.image_metadata import generation_parameters, parameters_text, read_metadata, save_image
from . import comfy_services as services
from .types import CATEGORY

PICTURE_TYPES = (".png", ".webp")


def save_pictures(images: torch.Tensor, prefix: str, extension: str, prompt, extra_pnginfo, text: str) -> list[dict]:
    """Each image as a numbered file in the output folder, with the metadata; ComfyUI's ui entries plus the path."""
    saved = []
    for image in images:
        pixels = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        path, subfolder, name = services.output_image_path(prefix, pixels.shape[1], pixels.shape[0], extension)
        save_image(pixels, path, prompt, extra_pnginfo, text)
        saved.append({"filename": name, "subfolder": subfolder, "type": "output", "path": path})
    return saved


def shown(saved: list[dict]) -> list[dict]:
    """ComfyUI's ui entries of saved pictures (no server paths)."""
    return [{k: v for k, v in s.items() if k != "path"} for s in saved]


class ZImageSaveImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageSaveImage", display_name="Z-Image Save Image (with metadata)", category=f"{CATEGORY}/image",
            description=("Saves images as PNG or WebP with how they were made: ComfyUI's prompt and workflow (drag the picture onto the "
                         "canvas to get the graph back) and the plain 'parameters' text image sites read: prompt, negative, seed, steps, "
                         "sampler settings, the model, LoRAs and ControlNets with strengths and SHA-256 hashes (native graphs and the pack's)."),
            search_aliases=["save image metadata", "save png info", "save webp"],
            inputs=[
                io.Image.Input("images", tooltip="From a VAE Decode."),
                io.String.Input("filename_prefix", default="z-image", tooltip="File name start, in ComfyUI's output folder (subfolders allowed: people/z-image; no '..', no hidden names)."),
                io.Combo.Input("format", options=["png", "webp"], default="png", tooltip="png: lossless, read everywhere. webp: smaller; the metadata goes into EXIF."),
            ],
            outputs=[io.String.Output(display_name="parameters", tooltip="The parameters text written into the pictures.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix):
        try:  # at queue time: a bad name fails before anything runs
            check_output_prefix(filename_prefix)
        except ZImageInputError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, images, filename_prefix="z-image", format="png") -> io.NodeOutput:
        prompt, unique_id = cls.hidden.prompt, cls.hidden.unique_id
        params = generation_parameters(prompt or {}, str(unique_id), services.find_model) if prompt and unique_id is not None else {}
        text = parameters_text(params) if params.get("sampler") else ""
        saved = save_pictures(images, filename_prefix, format, prompt, cls.hidden.extra_pnginfo, text)
        return io.NodeOutput(text, ui={"images": shown(saved)})


class ZImageReadMetadata(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageReadMetadata", display_name="Z-Image Read Image Metadata", category=f"{CATEGORY}/image",
            description="Reads what a picture carries: the parameters text and the workflow (PNG or WebP from ComfyUI or this pack).",
            search_aliases=["png info", "read metadata", "image parameters"],
            inputs=[io.Combo.Input("image", options=services.input_files(PICTURE_TYPES), upload=io.UploadType.image,
                                   tooltip="A PNG or WebP in ComfyUI's input folder (upload one with the button).")],
            outputs=[io.String.Output(display_name="parameters", tooltip="The A1111-style parameters text ('' if none)."),
                     io.String.Output(display_name="prompt_json", tooltip="The API graph as JSON ('' if none)."),
                     io.String.Output(display_name="workflow_json", tooltip="The UI workflow as JSON ('' if none).")],
        )

    @classmethod
    def fingerprint_inputs(cls, image):
        try:  # a replaced file of the same name is read again
            return os.path.getmtime(services.input_file(image))
        except (OSError, ZImageInputError):
            return ""

    @classmethod
    def execute(cls, image) -> io.NodeOutput:
        meta = read_metadata(services.input_file(image), shown_name=image)
        return io.NodeOutput(meta.get("parameters", ""), json.dumps(meta["prompt"]) if "prompt" in meta else "",
                             json.dumps(meta["workflow"]) if "workflow" in meta else "")
