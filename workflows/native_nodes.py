"""The ComfyUI core nodes our example workflows use, declared as ComfyUI declares them, with small
standalone implementations so the workflows also run headless (scripts and tests)."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo


class SaveImage:
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    output_dir = os.path.join(os.getcwd(), "out")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        os.makedirs(self.output_dir, exist_ok=True)
        saved = []
        for index, image in enumerate(images):
            pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            info = PngInfo()
            if prompt is not None:
                info.add_text("prompt", json.dumps(prompt))
            path = os.path.join(self.output_dir, f"{filename_prefix}_{index:05}_.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(np.ascontiguousarray(pixels)).save(path, pnginfo=info)
            saved.append(path)
        return {"ui": {"images": saved}}


class EmptySD3LatentImage:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent/sd3"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
                             "height": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    def generate(self, width, height, batch_size=1):
        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


class PreviewAny:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "main"
    OUTPUT_NODE = True
    CATEGORY = "utilities"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("*", {})}}

    def main(self, source=None):
        text = source if isinstance(source, str) else repr(source)
        return {"ui": {"text": [text]}, "result": (text,)}


class LoadImage:
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"
    input_dir = os.path.join(os.getcwd(), "input")

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(f for f in os.listdir(cls.input_dir) if os.path.isfile(os.path.join(cls.input_dir, f))) if os.path.isdir(cls.input_dir) else []
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image):
        picture = Image.open(os.path.join(self.input_dir, image))
        rgb = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)[None]
        if "A" in picture.getbands():
            mask = 1.0 - torch.from_numpy(np.asarray(picture.getchannel("A"), dtype=np.float32) / 255.0)[None]
        else:
            mask = torch.zeros(1, 64, 64)
        return (rgb, mask)


class ImageScale:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"
    upscale_methods = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "upscale_method": (cls.upscale_methods,),
                             "width": ("INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                             "height": ("INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                             "crop": (["disabled", "center"],)}}

    def upscale(self, image, upscale_method, width, height, crop):
        mode = {"nearest-exact": "nearest-exact", "area": "area"}.get(upscale_method, "bilinear")
        scaled = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(height, width), mode=mode)
        return (scaled.movedim(1, -1).clamp(0, 1),)


NATIVE_NODE_CLASS_MAPPINGS = {"LoadImage": LoadImage, "ImageScale": ImageScale, "SaveImage": SaveImage, "EmptySD3LatentImage": EmptySD3LatentImage, "PreviewAny": PreviewAny}
