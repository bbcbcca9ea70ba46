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
# ComfyUI's layout for a pack's templates: UI workflows in <pack>/example_workflows/ (listed in the
# Templates browser); the API forms one level down, so the browser does not list them as templates.
EXAMPLES_DIR = os.path.join(os.path.dirname(HERE), "example_workflows")
API_DIR = os.path.join(EXAMPLES_DIR, "api")
INPUT_DIR = os.path.join(EXAMPLES_DIR, "input")  # the example pictures the ControlNet workflows load

# The file names users download (Comfy-Org's repackaged Z-Image-Turbo files).
TRANSFORMER_FILE = "z_image_turbo_bf16.safetensors"
TEXT_ENCODER_FILE = "qwen_3_4b.safetensors"
VAE_FILE = "ae.safetensors"

# Download locations of the files whose address is known (Comfy-Org's repack); the frontend offers them
# when a file is missing. The TwinFlow, Base, distill-LoRA and ControlNet names are left without an
# address: their repacks' exact file names could not be checked here.
_COMFY_ORG = "https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files"
MODEL_DOWNLOADS = {
    TRANSFORMER_FILE: {"name": TRANSFORMER_FILE, "url": f"{_COMFY_ORG}/diffusion_models/{TRANSFORMER_FILE}", "directory": "diffusion_models"},
    TEXT_ENCODER_FILE: {"name": TEXT_ENCODER_FILE, "url": f"{_COMFY_ORG}/text_encoders/{TEXT_ENCODER_FILE}", "directory": "text_encoders"},
    VAE_FILE: {"name": VAE_FILE, "url": f"{_COMFY_ORG}/vae/{VAE_FILE}", "directory": "vae"},
}
_FILE_INPUTS = ("model_name", "text_encoder_name", "vae_name")


def with_downloads(nodes: list[Node]) -> list[Node]:
    """Each loader node carries the download location of the file it names, as ComfyUI's templates do."""
    for node in nodes:
        names = [node.inputs.get(k) for k in _FILE_INPUTS]
        node.models = tuple(MODEL_DOWNLOADS[n] for n in names if n in MODEL_DOWNLOADS)
    return nodes


SETUP_NOTE = (
    "Z-Image-Turbo text-to-image (8 steps, no CFG).\n\n"
    f"models/diffusion_models/{TRANSFORMER_FILE}\nmodels/text_encoders/{TEXT_ENCODER_FILE}\nmodels/vae/{VAE_FILE}\n\n"
    "Width and height: multiples of 16. For Z-Image-Base: 30 steps, connect a negative prompt, cfg 4."
)


def text_to_image() -> list[Node]:
    return [
        Node(9, "Note", {"text": SETUP_NOTE}, "Read me", pos=(-380, 40), size=(340, 260)),
        Node(1, "ZImageTransformerLoader", {"model_name": TRANSFORMER_FILE, "weight_dtype": "default", "compute_dtype": "auto", "attention": "sdpa", "compile": False, "quantized_matmul": "dequantize", "memory_mode": "auto"}, pos=(0, 0), size=(340, 190)),
        Node(2, "ZImageTextEncoderLoader", {"text_encoder_name": TEXT_ENCODER_FILE, "weight_dtype": "default", "compute_dtype": "auto"}, pos=(0, 230), size=(340, 130)),
        Node(3, "ZImageVAELoader", {"vae_name": VAE_FILE, "weight_dtype": "fp32", "compute_dtype": "auto"}, pos=(0, 400), size=(340, 110)),
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


TWO_STEP_NOTE = (
    "2-step step-decoupled generation (Turbo++ form).\n\n"
    "The 2-Step Model node takes the parameters for each step: the same model twice (plain Turbo in 2 steps), "
    "two transformer files, or one transformer with a different LoRA stack per step. A bundle from "
    "models/zimage_bundles loads with the 2-Step Bundle Loader instead.\n\n"
    "sigma_mid 0.5 with shift 3 is the Turbo schedule for 2 steps (the model sees σ 1.0 then 0.75). "
    "step1_latent is step 1's guess of the image."
)


def two_step() -> list[Node]:
    base = [n for n in text_to_image() if n.class_type in ("ZImageTransformerLoader", "ZImageTextEncoderLoader", "ZImageVAELoader", "ZImageTextEncode", "ZImageEmptyLatent")]
    return base + [
        Node(9, "Note", {"text": TWO_STEP_NOTE}, "Read me", pos=(-380, 40), size=(340, 300)),
        Node(10, "ZImageTwoStepModel", {"step1_model": (1, 0), "step2_model": (1, 0)}, pos=(380, -160), size=(320, 80)),
        Node(11, "ZImageTwoStepSampler", {"step_model": (10, 0), "positive": (4, 0), "latent_image": (5, 0), "seed": 42, "sigma_mid": 0.5,
                                          "shift": 3.0, "step2_rule": "euler", "denoise": 1.0, "use_bundle_settings": True}, pos=(820, 0), size=(320, 300)),
        Node(12, "ZImageVAEDecode", {"vae": (3, 0), "samples": (11, 0), "tile_size": 0}, pos=(1180, 0), size=(260, 100)),
        Node(13, "SaveImage", {"images": (12, 0), "filename_prefix": "z-image-2step"}, pos=(1480, 0), size=(512, 560)),
        Node(14, "ZImageVAEDecode", {"vae": (3, 0), "samples": (11, 1), "tile_size": 0}, "Decode step 1", pos=(1180, 360), size=(260, 100)),
        Node(15, "SaveImage", {"images": (14, 0), "filename_prefix": "z-image-2step-step1"}, pos=(1480, 600), size=(512, 560)),
    ]


def two_step_vs_eight_step() -> list[Node]:
    eight = [n for n in text_to_image() if n.class_type != "Note"]
    next(n for n in eight if n.class_type == "SaveImage").inputs["filename_prefix"] = "z-image-8step"
    for node in eight:
        if node.class_type == "ZImageTurboSampler":
            node.title = "8 steps"
    return eight + [
        Node(9, "Note", {"text": "Side by side: the same prompt and seed in 8 steps (top) and in 2 steps (bottom).\n\n" + TWO_STEP_NOTE}, "Read me", pos=(-380, 40), size=(340, 320)),
        Node(10, "ZImageTwoStepModel", {"step1_model": (1, 0), "step2_model": (1, 0)}, pos=(380, 560), size=(320, 80)),
        Node(11, "ZImageTwoStepSampler", {"step_model": (10, 0), "positive": (4, 0), "latent_image": (5, 0), "seed": 42, "sigma_mid": 0.5,
                                          "shift": 3.0, "step2_rule": "euler", "denoise": 1.0, "use_bundle_settings": True}, "2 steps", pos=(820, 560), size=(320, 300)),
        Node(12, "ZImageVAEDecode", {"vae": (3, 0), "samples": (11, 0), "tile_size": 0}, pos=(1180, 560), size=(260, 100)),
        Node(13, "SaveImage", {"images": (12, 0), "filename_prefix": "z-image-2step"}, pos=(2020, 0), size=(512, 560)),
    ]


TWINFLOW_FILE = "TwinFlow-Z-Image-Turbo_bf16.safetensors"
BASE_FILE = "z_image_bf16.safetensors"
DISTILL_LORA_FILE = "Z-Image-Fun-Lora-Distill-4-Steps.safetensors"
TWINFLOW_NOTE = (
    "TwinFlow-Z-Image-Turbo in 2 steps (inclusionAI, Apache-2.0).\n\n"
    f"models/diffusion_models/{TWINFLOW_FILE} (the bf16 single file, or a diffusers folder, GGUF or fp8 repack: "
    "the loader detects TwinFlow from its t_embedder_2)\n"
    f"models/text_encoders/{TEXT_ENCODER_FILE}\nmodels/vae/{VAE_FILE}\n\n"
    "nfe 2 (or up to 4), gaps -1 = the authors' values, stochastic_ratio 1. step1_latent is step 1's guess of the image."
)


def _twinflow_sampler(node_id: int, model: tuple, title: str | None = None, pos=(820, 0)) -> Node:
    return Node(node_id, "ZImageTwinFlowSampler", {"model": model, "positive": (4, 0), "latent_image": (5, 0), "seed": 42, "nfe": 2, "gap_start": 0.001,
                                                   "gap_end": -1.0, "stochastic_ratio": 1.0, "denoise": 1.0}, title, pos=pos, size=(320, 300))


def twinflow() -> list[Node]:
    base = [n for n in text_to_image() if n.class_type in ("ZImageTransformerLoader", "ZImageTextEncoderLoader", "ZImageVAELoader", "ZImageTextEncode", "ZImageEmptyLatent")]
    next(n for n in base if n.class_type == "ZImageTransformerLoader").inputs["model_name"] = TWINFLOW_FILE
    return base + [
        Node(9, "Note", {"text": TWINFLOW_NOTE}, "Read me", pos=(-380, 40), size=(340, 300)),
        _twinflow_sampler(10, (1, 0)),
        Node(11, "ZImageVAEDecode", {"vae": (3, 0), "samples": (10, 0), "tile_size": 0}, pos=(1180, 0), size=(260, 100)),
        Node(12, "SaveImage", {"images": (11, 0), "filename_prefix": "z-image-twinflow"}, pos=(1480, 0), size=(512, 560)),
    ]


def twinflow_with_lora() -> list[Node]:
    nodes = [n for n in twinflow() if n.class_type != "Note"]
    next(n for n in nodes if n.class_type == "ZImageTwinFlowSampler").inputs["model"] = (13, 0)
    return nodes + [
        Node(9, "Note", {"text": TWINFLOW_NOTE + "\n\nLoRAs trained on Z-Image-Turbo apply to TwinFlow as to Turbo (models/loras)."}, "Read me", pos=(-380, 40), size=(340, 320)),
        Node(13, "ZImageLoraStack", {"model": (1, 0), "lora_1": LORA_FILE, "strength_1": 0.8, "lora_2": "None", "strength_2": 1.0,
                                     "lora_3": "None", "strength_3": 1.0, "lora_4": "None", "strength_4": 1.0}, pos=(380, -300), size=(340, 260)),
        Node(14, "PreviewAny", {"source": (13, 1)}, "LoRA report", pos=(760, -300), size=(420, 200)),
    ]


def base_with_distill_lora() -> list[Node]:
    nodes = [n for n in text_to_image() if n.class_type != "Note"]
    next(n for n in nodes if n.class_type == "ZImageTransformerLoader").inputs["model_name"] = BASE_FILE
    sampler = next(n for n in nodes if n.class_type == "ZImageTurboSampler")
    sampler.inputs.update(model=(10, 0), steps=4)
    next(n for n in nodes if n.class_type == "SaveImage").inputs["filename_prefix"] = "z-image-base-4step"
    note = ("Z-Image (Base) in 4 model calls with alibaba-pai's Z-Image-Fun-Lora-Distill (4-step) at strength 0.8, cfg 1.\n\n"
            f"models/diffusion_models/{BASE_FILE}\nmodels/loras/{DISTILL_LORA_FILE}\n\n"
            "The 8-step distill LoRA: steps 8. (The authors count scheduler steps: 5 = 4 model calls; the steps input here counts model calls.)")
    return nodes + [
        Node(9, "Note", {"text": note}, "Read me", pos=(-380, 40), size=(340, 300)),
        Node(10, "ZImageLoraLoader", {"model": (1, 0), "lora_name": DISTILL_LORA_FILE, "strength": 0.8}, pos=(380, -200), size=(340, 110)),
        Node(11, "PreviewAny", {"source": (10, 1)}, "LoRA report", pos=(760, -300), size=(420, 200)),
    ]


def turbo_vs_twinflow() -> list[Node]:
    eight = [n for n in text_to_image() if n.class_type != "Note"]
    next(n for n in eight if n.class_type == "SaveImage").inputs["filename_prefix"] = "z-image-turbo-8step"
    next(n for n in eight if n.class_type == "ZImageTurboSampler").title = "Turbo, 8 steps"
    loader = next(n for n in eight if n.class_type == "ZImageTransformerLoader")
    twin_loader = Node(20, "ZImageTransformerLoader", {**loader.inputs, "model_name": TWINFLOW_FILE}, "TwinFlow", pos=(0, 560), size=(340, 190))
    return eight + [
        Node(9, "Note", {"text": "Side by side: the same prompt and seed with Z-Image-Turbo in 8 steps (top) and TwinFlow in 2 (bottom).\n\n" + TWINFLOW_NOTE}, "Read me", pos=(-380, 40), size=(340, 340)),
        twin_loader,
        _twinflow_sampler(21, (20, 0), "TwinFlow, 2 steps", pos=(820, 560)),
        Node(22, "ZImageVAEDecode", {"vae": (3, 0), "samples": (21, 0), "tile_size": 0}, pos=(1180, 560), size=(260, 100)),
        Node(23, "SaveImage", {"images": (22, 0), "filename_prefix": "z-image-twinflow-2step"}, pos=(2020, 0), size=(512, 560)),
    ]


CONTROLNET_FILE = "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors"
TILE_CONTROLNET_FILE = "Z-Image-Turbo-Fun-Controlnet-Tile-2.1.safetensors"
CONTROL_IMAGES = {"canny": "canny_source.png", "depth": "depth_map.png", "pose": "pose_map.png", "inpaint": "inpaint_source.png", "tile": "tile_lowres.png"}
CONTROL_NOTE = (
    "Z-Image-Turbo with a Fun ControlNet Union ({what}).\n\n"
    "models/model_patches/{file}\n(1.0, 2.0, 2.1, 2.1 lite and Tile all load; the version is detected from the file; "
    "on 12-16 GB cards load it as fp8_e4m3fn).\n\n"
    "strength -1 = the version's default. {extra}"
)


def _controlled(kind: str, what: str, extra: str, hint: list[Node], apply_inputs: dict, control_file: str = CONTROLNET_FILE,
                latent: tuple | None = None, denoise: float = 1.0, extra_nodes: list[Node] = ()) -> list[Node]:
    nodes = [n for n in text_to_image() if n.class_type != "Note"]
    sampler = next(n for n in nodes if n.class_type == "ZImageTurboSampler")
    sampler.inputs.update(model=(21, 0), denoise=denoise)
    if latent is not None:
        sampler.inputs["latent_image"] = latent
        nodes = [n for n in nodes if n.class_type != "ZImageEmptyLatent"]
    next(n for n in nodes if n.class_type == "SaveImage").inputs["filename_prefix"] = f"z-image-{kind}"
    return nodes + [
        Node(9, "Note", {"text": CONTROL_NOTE.format(what=what, file=control_file, extra=extra)}, "Read me", pos=(-380, 40), size=(340, 300)),
        Node(20, "ZImageControlNetLoader", {"controlnet_name": control_file, "weight_dtype": "default", "offload": False}, pos=(0, -560), size=(340, 130)),
        Node(22, "LoadImage", {"image": CONTROL_IMAGES[kind]}, "Control image", pos=(-380, -560), size=(340, 420)),
        *hint, *extra_nodes,
        Node(21, "ZImageControlNetApply", {"model": (1, 0), "controlnet": (20, 0), "vae": (3, 0), "strength": -1.0, "start_percent": 0.0,
                                           "end_percent": 1.0, "resize": "crop", **apply_inputs}, pos=(400, -560), size=(340, 320)),
    ]


def controlnet_canny() -> list[Node]:
    return _controlled("canny", "canny edges", "The Canny node makes the edge map from any photo.",
                       [Node(23, "ZImageCanny", {"image": (22, 0), "low_threshold": 0.2, "high_threshold": 0.5}, pos=(0, -380), size=(340, 130))],
                       {"image": (23, 0)})


def controlnet_depth() -> list[Node]:
    return _controlled("depth", "depth map", "Load a depth map made by a depth preprocessor pack (e.g. Depth Anything in comfyui_controlnet_aux).", [], {"image": (22, 0)})


def controlnet_pose() -> list[Node]:
    return _controlled("pose", "pose map", "Load an OpenPose / DWPose skeleton image (e.g. from comfyui_controlnet_aux).", [], {"image": (22, 0)})


def controlnet_inpaint() -> list[Node]:
    return _controlled("inpaint", "inpainting", "The image's transparent area (paint it with the mask editor) is repainted; needs a 2.x file.",
                       [], {"inpaint_image": (22, 0), "mask": (22, 1)})


def controlnet_tile_upscale() -> list[Node]:
    return _controlled(
        "tile", "tile upscale", "The low-res image is scaled up, encoded and re-noised (denoise 0.65); the Tile ControlNet keeps it on the original.",
        [], {"image": (22, 0), "resize": "stretch"}, control_file=TILE_CONTROLNET_FILE, latent=(25, 0), denoise=0.65,
        extra_nodes=[Node(24, "ImageScale", {"image": (22, 0), "upscale_method": "lanczos", "width": 1024, "height": 1024, "crop": "center"}, pos=(0, -380), size=(340, 190)),
                     Node(25, "ZImageVAEEncode", {"vae": (3, 0), "pixels": (24, 0), "tile_size": 0}, pos=(380, 380), size=(260, 100))])


STEP1_LORA_FILE = "z_image_turbo_2step_step1_lora.safetensors"
STEP2_LORA_FILE = "z_image_turbo_2step_step2_lora.safetensors"
DISTILLED_NOTE = (
    "2-step generation with per-step LoRAs from zimage-distill (the pack's Turbo++ trainer).\n\n"
    f"Copy step1_lora.safetensors and step2_lora.safetensors from the trainer's --out folder into models/loras "
    f"(here named {STEP1_LORA_FILE} and {STEP2_LORA_FILE}). Each branch carries its step's LoRA; the 2-Step Model "
    "joins them. Keep sigma_mid, shift and step2_rule as trained (the trainer writes them into the LoRA files' "
    "header and into its bundle, which the 2-Step Bundle Loader reads instead)."
)


def two_step_distilled_loras() -> list[Node]:
    nodes = [n for n in two_step() if n.class_type != "Note"]
    model_node = next(n for n in nodes if n.class_type == "ZImageTwoStepModel")
    model_node.inputs.update(step1_model=(20, 0), step2_model=(21, 0))
    return nodes + [
        Node(9, "Note", {"text": DISTILLED_NOTE}, "Read me", pos=(-380, 40), size=(340, 300)),
        Node(20, "ZImageLoraLoader", {"model": (1, 0), "lora_name": STEP1_LORA_FILE, "strength": 1.0}, "Step 1 LoRA", pos=(380, -420), size=(340, 130)),
        Node(21, "ZImageLoraLoader", {"model": (1, 0), "lora_name": STEP2_LORA_FILE, "strength": 1.0}, "Step 2 LoRA", pos=(380, -260), size=(340, 130)),
    ]


PROMPT_LIST_NOTE = (
    "Z-Image-Turbo over a prompt list, in one queued prompt.\n\n"
    "One prompt per line, or a .txt / .csv / .jsonl file from the input folder (csv/jsonl: 'prompt', optional 'negative' and "
    "'seed' columns). seed_mode: fixed, increment (a seed sweep: one prompt, repeat 10) or random (recorded in each picture).\n\n"
    "Each picture is saved with its metadata as soon as it is done; Cancel keeps the finished ones."
)


def prompt_list() -> list[Node]:
    loaders = [n for n in text_to_image() if n.class_type in ("ZImageTransformerLoader", "ZImageTextEncoderLoader", "ZImageVAELoader")]
    return [
        Node(9, "Note", {"text": PROMPT_LIST_NOTE}, "Read me", pos=(-380, 40), size=(340, 260)),
        *loaders,
        Node(4, "ZImagePromptList", {"prompts": "A red fox sitting in fresh snow at sunrise, photograph.\nA lighthouse on a cliff at dusk, oil painting.\n"
                                                "A bowl of ramen on a wooden table, top view, studio light.", "seed": 42, "seed_mode": "increment", "repeat": 1,
                                     "file": "", "negative": ""}, pos=(380, 0), size=(400, 300)),
        Node(6, "ZImagePromptListGenerate", {"model": (1, 0), "text_encoder": (2, 0), "vae": (3, 0), "prompt": (4, 0), "seed": (4, 2),
                                             "width": 1024, "height": 1024, "steps": 8, "shift": 3.0, "filename_prefix": "z-image-batch",
                                             "format": "png", "negative": (4, 1), "cfg": 1.0}, pos=(820, 0), size=(400, 560)),
    ]


WORKFLOWS = {
    "z_image_turbo_text_to_image": text_to_image,
    "z_image_turbo_lora_stack": text_to_image_with_loras,
    "z_image_turbo_2step": two_step,
    "z_image_2step_vs_8step": two_step_vs_eight_step,
    "z_image_controlnet_canny": controlnet_canny,
    "z_image_controlnet_depth": controlnet_depth,
    "z_image_controlnet_pose": controlnet_pose,
    "z_image_controlnet_inpaint": controlnet_inpaint,
    "z_image_controlnet_tile_upscale": controlnet_tile_upscale,
    "z_image_twinflow_2step": twinflow,
    "z_image_twinflow_lora": twinflow_with_lora,
    "z_image_base_4step_distill_lora": base_with_distill_lora,
    "z_image_turbo_vs_twinflow": turbo_vs_twinflow,
    "z_image_turbo_prompt_list": prompt_list,
    "z_image_turbo_2step_distilled_loras": two_step_distilled_loras,
}


def render() -> dict[str, dict]:
    """{file name: JSON object} for every example workflow."""
    classes = all_node_classes()
    files = {}
    for name, graph in WORKFLOWS.items():
        nodes = with_downloads(graph())
        files[f"{name}.json"] = to_ui(nodes, classes)
        files[f"{name}_api.json"] = to_api(nodes, NODE_DISPLAY_NAME_MAPPINGS)
    return files


def workflow_path(file_name: str) -> str:
    return os.path.join(API_DIR if file_name.endswith("_api.json") else EXAMPLES_DIR, file_name)


def dumps(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for name, obj in render().items():
        path = workflow_path(name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(dumps(obj))
        print("wrote", path)


if __name__ == "__main__":
    main()
