"""The pack's ComfyUI nodes (V3 schema), registered through ``comfy_entrypoint``."""

from comfy_api.latest import ComfyExtension, io

from .batch_nodes import ZImagePromptList, ZImagePromptListGenerate
from .control_nodes import ZImageCanny, ZImageControlNetApply, ZImageControlNetLoader, ZImageGray, ZImageScribble
from .image_nodes import ZImageReadMetadata, ZImageSaveImage
from .loader_nodes import ZImageTextEncoderLoader, ZImageTransformerLoader, ZImageVAELoader
from .lora_nodes import ZImageLoraLoader, ZImageLoraStack
from .sampling_nodes import ZImageEmptyLatent, ZImageTurboSampler
from .twinflow_nodes import ZImageTwinFlowPatch, ZImageTwinFlowSampler, ZImageTwinFlowSamplerSelect, ZImageTwinFlowScheduler
from .two_step_nodes import ZImageSaveStepBundle, ZImageStepBundleLoader, ZImageTwoStepSampler

NODES: list[type[io.ComfyNode]] = [
    ZImageTransformerLoader, ZImageTextEncoderLoader, ZImageVAELoader,
    ZImageEmptyLatent, ZImageTurboSampler,
    ZImageLoraLoader, ZImageLoraStack,
    ZImageTwinFlowPatch, ZImageTwinFlowSampler, ZImageTwinFlowSamplerSelect, ZImageTwinFlowScheduler,
    ZImageTwoStepSampler, ZImageStepBundleLoader, ZImageSaveStepBundle,
    ZImageControlNetLoader, ZImageControlNetApply, ZImageCanny, ZImageGray, ZImageScribble,
    ZImageSaveImage, ZImageReadMetadata, ZImagePromptList, ZImagePromptListGenerate,
]


class ZImageExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> ZImageExtension:
    return ZImageExtension()
