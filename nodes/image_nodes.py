"""VAE decode and encode."""

from __future__ import annotations

import json
import os

import torch

from ..loaders.confined_paths import check_output_prefix
from ..loaders.errors import ZImageInputError
from ..loaders.image_metadata import generation_parameters, parameters_text, read_metadata, save_image
from ..loaders.vae import decode, encode
from ..samplers.latents import check_latent
from ..samplers.memory_budget import check_vae_fits
from . import comfy_services as services
from .sampling_nodes import latent_samples
from .types import CATEGORY, ZIMAGE_VAE

PICTURE_TYPES = (".png", ".webp")
_TILE = ("INT", {"default": 0, "min": 0, "max": 4096, "step": 64, "tooltip": "0 = whole image at once. Otherwise tile size in pixels, to decode large images in less memory."})


class ZImageVAEDecode:
    DESCRIPTION = "Decodes a Z-Image latent to an image with the FLUX.1 VAE; tiled for large images."
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("Images [batch, height, width, 3] in 0..1.",)
    FUNCTION = "decode"
    SEARCH_ALIASES = ["vae decode", "latent to image"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": (ZIMAGE_VAE, {"tooltip": "From Z-Image VAE Loader."}), "samples": ("LATENT", {"tooltip": "From a Z-Image sampler or KSampler."}), "tile_size": _TILE}}

    def decode(self, vae, samples, tile_size=0):
        latent = latent_samples(samples, "samples")
        check_latent(latent, "samples")
        check_vae_fits(vae, latent.shape[2] * 8, latent.shape[3] * 8, latent.shape[0], tile_size, True, services.compute_device())
        services.to_compute_device(vae.model)
        return (decode(vae, latent, tile_size),)


class ZImageVAEEncode:
    DESCRIPTION = "Encodes an image to a Z-Image latent with the FLUX.1 VAE (for image-to-image with denoise < 1)."
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The image's latent in ComfyUI's raw VAE space.",)
    FUNCTION = "encode"
    SEARCH_ALIASES = ["vae encode", "image to latent"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": (ZIMAGE_VAE, {"tooltip": "From Z-Image VAE Loader."}), "pixels": ("IMAGE", {"tooltip": "Width and height multiples of 16."}), "tile_size": _TILE}}

    def encode(self, vae, pixels, tile_size=0):
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[-1] < 3:
            raise ZImageInputError("pixels", f"{getattr(pixels, 'shape', type(pixels).__name__)}", "an IMAGE [batch, height, width, 3]", "connect a Load Image node")
        h, w = pixels.shape[1:3]
        if h % 16 or w % 16:
            raise ZImageInputError("pixels", f"an image of {w}×{h}", "width and height multiples of 16", "crop or scale the image first (e.g. ImageScale to a multiple of 16)")
        check_vae_fits(vae, h, w, pixels.shape[0], tile_size, False, services.compute_device())
        services.to_compute_device(vae.model)
        return ({"samples": encode(vae, pixels, tile_size)},)


def save_pictures(images: torch.Tensor, prefix: str, extension: str, prompt, extra_pnginfo, text: str) -> list[dict]:
    """Each image as a numbered file in the output folder, with the metadata; ComfyUI's ui entries plus the path."""
    saved = []
    for image in images:
        pixels = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        path, subfolder, name = services.output_image_path(prefix, pixels.shape[1], pixels.shape[0], extension)
        save_image(pixels, path, prompt, extra_pnginfo, text)
        saved.append({"filename": name, "subfolder": subfolder, "type": "output", "path": path})
    return saved


class ZImageSaveImage:
    DESCRIPTION = ("Saves images as PNG or WebP with how they were made: ComfyUI's prompt and workflow (drag the picture onto the "
                   "canvas to get the graph back) and the plain 'parameters' text image sites read: prompt, negative, seed, steps, "
                   "sampler settings, the model, LoRAs and ControlNets with strengths and SHA-256 hashes.")
    CATEGORY = f"{CATEGORY}/image"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("parameters",)
    OUTPUT_TOOLTIPS = ("The parameters text written into the pictures.",)
    OUTPUT_NODE = True
    FUNCTION = "save"
    SEARCH_ALIASES = ["save image metadata", "save png info", "save webp"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "From a VAE Decode."}),
            "filename_prefix": ("STRING", {"default": "z-image", "tooltip": "File name start, in ComfyUI's output folder (subfolders allowed: people/z-image; no '..', no hidden names)."}),
            "format": (["png", "webp"], {"default": "png", "tooltip": "png: lossless, read everywhere. webp: smaller; the metadata goes into EXIF."}),
        }, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix):
        try:  # at queue time: a bad name fails before anything runs
            check_output_prefix(filename_prefix)
        except ZImageInputError as err:
            return str(err)
        return True

    def save(self, images, filename_prefix="z-image", format="png", prompt=None, extra_pnginfo=None, unique_id=None):
        params = generation_parameters(prompt or {}, str(unique_id), services.find_model) if prompt and unique_id is not None else {}
        text = parameters_text(params) if params.get("sampler") else ""
        saved = save_pictures(images, filename_prefix, format, prompt, extra_pnginfo, text)
        return {"ui": {"images": [{k: v for k, v in s.items() if k != "path"} for s in saved]}, "result": (text,)}


class ZImageReadMetadata:
    DESCRIPTION = "Reads what a picture carries: the parameters text and the workflow (PNG or WebP from ComfyUI or this pack)."
    CATEGORY = f"{CATEGORY}/image"
    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("parameters", "prompt_json", "workflow_json")
    OUTPUT_TOOLTIPS = ("The A1111-style parameters text ('' if none).", "The API graph as JSON ('' if none).", "The UI workflow as JSON ('' if none).")
    FUNCTION = "read"
    SEARCH_ALIASES = ["png info", "read metadata", "image parameters"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (services.input_files(PICTURE_TYPES), {"image_upload": True, "tooltip": "A PNG or WebP in ComfyUI's input folder (upload one with the button)."})}}

    @classmethod
    def IS_CHANGED(cls, image):
        try:  # a replaced file of the same name is read again
            return os.path.getmtime(services.input_file(image))
        except (OSError, ZImageInputError):
            return ""

    def read(self, image):
        meta = read_metadata(services.input_file(image), shown_name=image)
        return (meta.get("parameters", ""), json.dumps(meta["prompt"]) if "prompt" in meta else "", json.dumps(meta["workflow"]) if "workflow" in meta else "")
