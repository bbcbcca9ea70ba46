"""ComfyUI node registrations."""

from .image_nodes import ZImageVAEDecode, ZImageVAEEncode
from .lora_nodes import ZImageLoraLoader, ZImageLoraStack
from .loader_nodes import ZImageTextEncoderLoader, ZImageTransformerLoader, ZImageVAELoader
from .sampling_nodes import ZImageEmptyLatent, ZImageTextEncode, ZImageTurboSampler

NODE_CLASS_MAPPINGS = {
    "ZImageTransformerLoader": ZImageTransformerLoader,
    "ZImageTextEncoderLoader": ZImageTextEncoderLoader,
    "ZImageVAELoader": ZImageVAELoader,
    "ZImageTextEncode": ZImageTextEncode,
    "ZImageEmptyLatent": ZImageEmptyLatent,
    "ZImageTurboSampler": ZImageTurboSampler,
    "ZImageVAEDecode": ZImageVAEDecode,
    "ZImageVAEEncode": ZImageVAEEncode,
    "ZImageLoraLoader": ZImageLoraLoader,
    "ZImageLoraStack": ZImageLoraStack,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ZImageTransformerLoader": "Z-Image Transformer Loader",
    "ZImageTextEncoderLoader": "Z-Image Text Encoder Loader",
    "ZImageVAELoader": "Z-Image VAE Loader",
    "ZImageTextEncode": "Z-Image Text Encode",
    "ZImageEmptyLatent": "Z-Image Empty Latent",
    "ZImageTurboSampler": "Z-Image Turbo Sampler",
    "ZImageVAEDecode": "Z-Image VAE Decode",
    "ZImageVAEEncode": "Z-Image VAE Encode",
    "ZImageLoraLoader": "Z-Image LoRA",
    "ZImageLoraStack": "Z-Image LoRA Stack",
}
