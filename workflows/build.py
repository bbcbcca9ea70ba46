"""Writes the example workflows (UI and API format) from one description each.

Run ``python -m zimage_pack.workflows.build`` after changing a node's inputs; a test checks that
the committed files equal what this writes.
"""

from __future__ import annotations

import json
import os

from .. import NODE_DISPLAY_NAME_MAPPINGS
from .graph_format import Node, to_api, to_ui
from .headless import all_node_classes

HERE = os.path.dirname(os.path.abspath(__file__))

# The file names users download (Comfy-Org's repackaged Z-Image-Turbo files).
TRANSFORMER_FILE = "z_image_turbo_bf16.safetensors"
TEXT_ENCODER_FILE = "qwen_3_4b.safetensors"
VAE_FILE = "ae.safetensors"

SETUP_NOTE = (
    "Z-Image-Turbo text-to-image (8 steps, no CFG).\n\n"
    f"models/diffusion_models/{TRANSFORMER_FILE}\nmodels/text_encoders/{TEXT_ENCODER_FILE}\nmodels/vae/{VAE_FILE}\n\n"
    "Width and height: multiples of 16. For Z-Image-Base: 30 steps, connect a negative prompt, cfg 4."
)


def text_to_image() -> list[Node]:
    return [
        Node(9, "Note", {"text": SETUP_NOTE}, "Read me", pos=(-380, 40), size=(340, 260)),
        Node(1, "ZImageTransformerLoader", {"model_name": TRANSFORMER_FILE, "weight_dtype": "default"}, pos=(0, 0), size=(340, 90)),
        Node(2, "ZImageTextEncoderLoader", {"text_encoder_name": TEXT_ENCODER_FILE, "weight_dtype": "default", "tokenizer_path": ""}, pos=(0, 140), size=(340, 110)),
        Node(3, "ZImageVAELoader", {"vae_name": VAE_FILE, "weight_dtype": "fp32"}, pos=(0, 300), size=(340, 90)),
        Node(4, "ZImageTextEncode", {"text_encoder": (2, 0), "text": "A red fox sitting in fresh snow at sunrise, soft golden light, photograph, 85mm, shallow depth of field."}, "Prompt", pos=(380, 140), size=(400, 200)),
        Node(5, "ZImageEmptyLatent", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(380, 380), size=(300, 110)),
        Node(6, "ZImageTurboSampler", {"model": (1, 0), "positive": (4, 0), "latent_image": (5, 0), "seed": 42, "steps": 8, "shift": 3.0, "denoise": 1.0,
                                       "cfg": 1.0, "cfg_truncation": 1.0, "cfg_renorm": 0.0}, pos=(820, 0), size=(320, 300)),
        Node(7, "ZImageVAEDecode", {"vae": (3, 0), "samples": (6, 0), "tile_size": 0}, pos=(1180, 0), size=(260, 100)),
        Node(8, "SaveImage", {"images": (7, 0), "filename_prefix": "z-image-turbo"}, pos=(1480, 0), size=(512, 560)),
    ]


LORA_FILE = "my_z_image_lora.safetensors"
LORA_NOTE = (
    "Z-Image-Turbo with a LoRA stack.\n\n"
    f"Put LoRAs into models/loras (here: {LORA_FILE}). Any trainer's format loads: ai-toolkit, musubi-tuner, "
    "ComfyUI, diffusers/PEFT, DiffSynth, LyCORIS LoKr/LoHa. For a LoRA trained on Turbo that lost its 8-step "
    "sharpness, add the DistillPatch LoRA in slot 2.\n\nThe report lists every key that was not applied."
)


def text_to_image_with_loras() -> list[Node]:
    nodes = [n for n in text_to_image() if n.class_type != "Note"]
    sampler = next(n for n in nodes if n.class_type == "ZImageTurboSampler")
    sampler.inputs["model"] = (10, 0)
    return nodes + [
        Node(12, "Note", {"text": LORA_NOTE}, "Read me", pos=(-380, 40), size=(340, 260)),
        Node(10, "ZImageLoraStack", {"model": (1, 0), "lora_1": LORA_FILE, "strength_1": 0.8, "lora_2": "None", "strength_2": 1.0,
                                     "lora_3": "None", "strength_3": 1.0, "lora_4": "None", "strength_4": 1.0}, pos=(380, -300), size=(340, 260)),
        Node(11, "PreviewAny", {"source": (10, 1)}, "LoRA report", pos=(760, -300), size=(420, 200)),
    ]


WORKFLOWS = {"z_image_turbo_text_to_image": text_to_image, "z_image_turbo_lora_stack": text_to_image_with_loras}


def render() -> dict[str, dict]:
    """{file name: JSON object} for every example workflow."""
    classes = all_node_classes()
    files = {}
    for name, graph in WORKFLOWS.items():
        nodes = graph()
        files[f"{name}.json"] = to_ui(nodes, classes)
        files[f"{name}_api.json"] = to_api(nodes, NODE_DISPLAY_NAME_MAPPINGS)
    return files


def dumps(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for name, obj in render().items():
        with open(os.path.join(HERE, name), "w", encoding="utf-8") as fh:
            fh.write(dumps(obj))
        print("wrote", os.path.join(HERE, name))


if __name__ == "__main__":
    main()
