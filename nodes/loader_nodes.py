"""Loaders for the Z-Image files native UNETLoader / CLIPLoader / VAELoader cannot read; each gives
ComfyUI's own MODEL, CLIP or VAE (nodes/native_models.py)."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from . import comfy_services as services
from .native_models import WEIGHT_DTYPES, load_text_encoder_native, load_transformer_native, load_vae_native
from .types import CATEGORY


class ZImageTransformerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageTransformerLoader", display_name="Z-Image Transformer Loader", category=f"{CATEGORY}/loaders",
            description=("Loads a Z-Image transformer (Turbo, Base, TwinFlow) as ComfyUI's own MODEL from the files native "
                         "Load Diffusion Model cannot read: diffusers folders, files under another prefix, TwinFlow files (its "
                         "second embedder becomes a patch) and GGUF files (kept quantised). Works with KSampler and every MODEL node."),
            search_aliases=["z-image", "zimage", "turbo", "twinflow", "gguf", "diffusers folder", "load diffusion model"],
            inputs=[
                io.Combo.Input("model_name", options=services.list_models("diffusion_models", with_diffusers_folders=True),
                               tooltip="A file in models/diffusion_models (.safetensors or .gguf) or a diffusers folder in models/diffusers. "
                                       "Comfy-Org's own files load with native Load Diffusion Model too."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", advanced=True,
                               tooltip="As in Load Diffusion Model: default keeps the file's dtype; fp8 stores the weights in fp8 (half of bf16)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="ComfyUI's Z-Image MODEL (for KSampler and the Z-Image samplers).")],
        )

    @classmethod
    def execute(cls, model_name, weight_dtype="default") -> io.NodeOutput:
        return io.NodeOutput(load_transformer_native(services.model_path("diffusion_models", model_name), weight_dtype))


class ZImageTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageTextEncoderLoader", display_name="Z-Image Text Encoder Loader", category=f"{CATEGORY}/loaders",
            description=("Loads Z-Image's Qwen3-4B as ComfyUI's own CLIP (as Load CLIP with type lumina2) from a diffusers folder's "
                         "text_encoder/ or a single file under a prefix native Load CLIP does not read. Encode with CLIP Text Encode."),
            search_aliases=["qwen3", "qwen_3_4b", "clip loader", "z-image text encoder"],
            inputs=[io.Combo.Input("text_encoder_name", options=services.list_models("text_encoders", with_diffusers_folders=True),
                                   tooltip="qwen_3_4b.safetensors (any prefix) in models/text_encoders, or a diffusers folder in models/diffusers.")],
            outputs=[io.Clip.Output(display_name="clip", tooltip="ComfyUI's Z-Image CLIP (Qwen3-4B, Z-Image's prompt template).")],
        )

    @classmethod
    def execute(cls, text_encoder_name) -> io.NodeOutput:
        path = services.model_path("text_encoders", text_encoder_name)
        return io.NodeOutput(load_text_encoder_native(path, folder_paths.get_folder_paths("embeddings")))


class ZImageVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageVAELoader", display_name="Z-Image VAE Loader", category=f"{CATEGORY}/loaders",
            description="Loads the FLUX.1 VAE Z-Image uses as ComfyUI's own VAE, also from a diffusers folder's vae/.",
            search_aliases=["ae.safetensors", "flux vae", "load vae"],
            inputs=[io.Combo.Input("vae_name", options=services.list_models("vae", with_diffusers_folders=True),
                                   tooltip="ae.safetensors in models/vae, or a diffusers folder in models/diffusers.")],
            outputs=[io.Vae.Output(display_name="vae", tooltip="ComfyUI's VAE (for VAE Decode / VAE Encode).")],
        )

    @classmethod
    def execute(cls, vae_name) -> io.NodeOutput:
        return io.NodeOutput(load_vae_native(services.model_path("vae", vae_name)))
