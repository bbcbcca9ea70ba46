"""ComfyUI node registrations."""

from .batch_nodes import ZImagePromptList, ZImagePromptListGenerate
from .image_nodes import ZImageReadMetadata, ZImageSaveImage, ZImageVAEDecode, ZImageVAEEncode
from .two_step_nodes import ZImageSaveStepBundle, ZImageStepBundleLoader, ZImageTwoStepModel, ZImageTwoStepSampler
from .control_nodes import ZImageCanny, ZImageControlNetApply, ZImageControlNetLoader, ZImageGray, ZImageScribble
from .lora_nodes import ZImageLoraLoader, ZImageLoraStack
from .loader_nodes import ZImageTextEncoderLoader, ZImageTransformerLoader, ZImageVAELoader
from .sampling_nodes import ZImageEmptyLatent, ZImageTextEncode, ZImageTurboSampler
from .twinflow_nodes import ZImageTwinFlowSampler

NODE_CLASS_MAPPINGS = {
    "ZImageTransformerLoader": ZImageTransformerLoader,
    "ZImageTextEncoderLoader": ZImageTextEncoderLoader,
    "ZImageVAELoader": ZImageVAELoader,
    "ZImageTextEncode": ZImageTextEncode,
    "ZImageEmptyLatent": ZImageEmptyLatent,
    "ZImageTurboSampler": ZImageTurboSampler,
    "ZImageVAEDecode": ZImageVAEDecode,
    "ZImageVAEEncode": ZImageVAEEncode,
    "ZImageSaveImage": ZImageSaveImage,
    "ZImageReadMetadata": ZImageReadMetadata,
    "ZImagePromptList": ZImagePromptList,
    "ZImagePromptListGenerate": ZImagePromptListGenerate,
    "ZImageLoraLoader": ZImageLoraLoader,
    "ZImageLoraStack": ZImageLoraStack,
    "ZImageTwoStepModel": ZImageTwoStepModel,
    "ZImageStepBundleLoader": ZImageStepBundleLoader,
    "ZImageSaveStepBundle": ZImageSaveStepBundle,
    "ZImageTwoStepSampler": ZImageTwoStepSampler,
    "ZImageTwinFlowSampler": ZImageTwinFlowSampler,
    "ZImageControlNetLoader": ZImageControlNetLoader,
    "ZImageControlNetApply": ZImageControlNetApply,
    "ZImageCanny": ZImageCanny,
    "ZImageGray": ZImageGray,
    "ZImageScribble": ZImageScribble,
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
    "ZImageSaveImage": "Z-Image Save Image (with metadata)",
    "ZImageReadMetadata": "Z-Image Read Image Metadata",
    "ZImagePromptList": "Z-Image Prompt List (batch, seeds)",
    "ZImagePromptListGenerate": "Z-Image Prompt List Generate (saves each)",
    "ZImageLoraLoader": "Z-Image LoRA",
    "ZImageLoraStack": "Z-Image LoRA Stack",
    "ZImageTwoStepModel": "Z-Image 2-Step Model",
    "ZImageStepBundleLoader": "Z-Image 2-Step Bundle Loader",
    "ZImageSaveStepBundle": "Z-Image Save 2-Step Bundle",
    "ZImageTwoStepSampler": "Z-Image 2-Step Sampler",
    "ZImageTwinFlowSampler": "Z-Image TwinFlow Sampler (1-4 steps)",
    "ZImageControlNetLoader": "Z-Image ControlNet Loader (Fun Union)",
    "ZImageControlNetApply": "Z-Image Apply ControlNet",
    "ZImageCanny": "Z-Image Canny",
    "ZImageGray": "Z-Image Gray",
    "ZImageScribble": "Z-Image Scribble",
}
