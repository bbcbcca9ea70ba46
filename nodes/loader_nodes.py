"""Loader nodes: each lists the matching ComfyUI models folder and calls one engine loader."""

from __future__ import annotations

import os

from ..loaders.compute_dtype import COMPUTE_DTYPES
from ..loaders.dtypes import WEIGHT_DTYPES
from ..loaders.residency import MEMORY_MODES
from ..loaders.speed import ATTENTION_BACKENDS, compile_blocks, set_attention, use_fast_matmul
from ..loaders.text_encoder import load_text_encoder
from ..loaders.transformer import load_transformer
from ..loaders.vae import load_vae
from . import comfy_services as services
from .types import CATEGORY, ZIMAGE_MODEL, ZIMAGE_TEXT_ENCODER, ZIMAGE_VAE


def _compute_input(role: str):
    fallback = "fp16 with overflow protection" if role == "transformer" else "fp32 (fp16 overflows in it)"
    return (list(COMPUTE_DTYPES), {"default": "auto", "tooltip": f"The dtype the math runs in, separate from how the weights are stored. auto: bf16 where the GPU has it (RTX 30xx and newer), else {fallback}; an fp32 file computes in fp32. The console says what was picked."})


def _dtype_input(default: str = "default"):
    return (list(WEIGHT_DTYPES), {"default": default, "tooltip": "How the weights are held in memory. 'default' keeps the file's dtype; fp8_e4m3fn stores weights in fp8 (half of bf16) and computes in bf16."})


class ZImageTransformerLoader:
    DESCRIPTION = "Loads the Z-Image S3-DiT transformer (Turbo or Base) from a ComfyUI single file (bf16, fp16, fp8) or a diffusers folder."
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (ZIMAGE_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Z-Image transformer, for the Z-Image samplers.",)
    FUNCTION = "load"
    SEARCH_ALIASES = ["z-image", "zimage", "turbo", "s3-dit", "load diffusion model"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (services.list_models("diffusion_models", with_diffusers_folders=True), {"tooltip": "z_image_turbo_bf16.safetensors (or an fp8 / int8 / nvfp4 / mxfp8 repack, or a .gguf) in models/diffusion_models, or a diffusers folder in models/diffusers. Quantised files stay quantised on the GPU."}),
            "weight_dtype": _dtype_input(),
        }, "optional": {
            "compute_dtype": _compute_input("transformer"),
            "attention": (list(ATTENTION_BACKENDS), {"default": "sdpa", "tooltip": "Attention kernel. sdpa: PyTorch's own (always available). flash_varlen / sage_varlen: faster on recent NVIDIA cards when flash-attn / sageattention is installed (a clear error if not). SageAttention quantises attention to int8/fp8: slightly different pictures."}),
            "compile": ("BOOLEAN", {"default": False, "tooltip": "torch.compile each transformer block (diffusers' regional compilation). Off by default: the first run takes minutes, each new size recompiles, it needs a working Triton/C compiler, and it does not combine with block/leaf offload. Results may differ in the last bits."}),
            "quantized_matmul": (["dequantize", "fast"], {"default": "dequantize", "tooltip": "For quantised files (fp8, int8, nvfp4, mxfp8) on NVIDIA cards. dequantize: each layer's weight is expanded to bf16 for its matmul (the same numbers as the bf16 model with the quantised weights). fast: comfy-kitchen's quantised matmuls on the tensor cores (int8 from RTX 20xx, fp8 from RTX 40xx, nvfp4 on RTX 50xx), which also quantise the activations: faster, slightly different pictures. GGUF always dequantises."}),
            "memory_mode": (list(MEMORY_MODES), {"default": "auto", "tooltip": "Where the weights live while sampling. auto: the whole model on the GPU when it fits, else block_offload. full: all on the GPU. block_offload: one transformer block at a time streamed from RAM (the next one prefetched on a side stream): an 8 GB card runs the bf16 file. leaf_offload: one layer at a time, the last resort (slowest)."}),
        }}

    def load(self, model_name, weight_dtype="default", compute_dtype="auto", attention="sdpa", compile=False, quantized_matmul="dequantize", memory_mode="auto"):
        model = load_transformer(services.model_path("diffusion_models", model_name), weight_dtype, compute_dtype, services.compute_device())
        model.memory_mode = memory_mode
        use_fast_matmul(model.module, quantized_matmul == "fast")
        set_attention(model.module, attention)
        if compile:
            compile_blocks(model.module)
        print(model.describe())
        return (model,)


class ZImageTextEncoderLoader:
    DESCRIPTION = "Loads Z-Image's Qwen3-4B text encoder (qwen_3_4b.safetensors or a diffusers folder) and its tokenizer."
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (ZIMAGE_TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The Qwen3-4B text encoder, for Z-Image Text Encode.",)
    FUNCTION = "load"
    SEARCH_ALIASES = ["qwen3", "qwen_3_4b", "clip loader", "z-image text encoder"]

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder_name": (services.list_models("text_encoders", with_diffusers_folders=True), {"tooltip": "qwen_3_4b.safetensors (or qwen_3_4b_fp8_mixed, or a Qwen3-4B .gguf) in models/text_encoders, or a diffusers folder."}),
                "weight_dtype": _dtype_input(),
            },
            "optional": {
                "compute_dtype": _compute_input("text_encoder"),
            },
        }

    def load(self, text_encoder_name, weight_dtype="default", compute_dtype="auto"):
        # the tokenizer: a diffusers folder's own tokenizer/, else ComfyUI's bundled Qwen tokenizer (no
        # free-form path: a prompt may not point the server at folders of its choosing)
        path = services.model_path("text_encoders", text_encoder_name)
        tokenizer_path = path if os.path.isdir(path) else services.bundled_tokenizer_dir()
        encoder = load_text_encoder(path, tokenizer_path, weight_dtype, compute_dtype, services.compute_device())
        print(f"Z-Image text encoder {os.path.basename(path)}: {getattr(encoder.model, 'zimage_quantization', '') or 'plain weights'}, compute {str(encoder.compute_dtype).replace('torch.', '')}")
        return (encoder,)


class ZImageVAELoader:
    DESCRIPTION = "Loads the FLUX.1 VAE Z-Image uses (ae.safetensors, or a diffusers folder's vae/)."
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (ZIMAGE_VAE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The FLUX.1 VAE, for Z-Image VAE Decode / Encode.",)
    FUNCTION = "load"
    SEARCH_ALIASES = ["ae.safetensors", "flux vae", "load vae"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (services.list_models("vae", with_diffusers_folders=True), {"tooltip": "ae.safetensors in models/vae, or a diffusers folder."}),
            "weight_dtype": _dtype_input("fp32"),
        }, "optional": {
            "compute_dtype": _compute_input("vae"),
        }}

    def load(self, vae_name, weight_dtype="fp32", compute_dtype="auto"):
        return (load_vae(services.model_path("vae", vae_name), weight_dtype, compute_dtype, services.compute_device()),)
