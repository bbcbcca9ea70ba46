"""Writes the example workflows (UI and API format) from one description each, on Comfy-Org's native
Z-Image template (UNETLoader → ModelSamplingAuraFlow(3) → KSampler, CLIPLoader lumina2, VAELoader) with
the pack's nodes added for each capability, as few as the user needs.

The UI format takes each node's widget order from the node classes, so the build runs inside ComfyUI:
``bash scripts/build_workflows.sh`` after changing a node's inputs; a test in tests/in_comfyui checks
that the committed files equal what this writes.
"""

from __future__ import annotations

import json
import os

from .graph_format import Node, to_api, to_ui

HERE = os.path.dirname(os.path.abspath(__file__))
# ComfyUI's layout for a pack's templates: UI workflows in <pack>/example_workflows/ (listed in the
# Templates browser); the API forms one level down, so the browser does not list them as templates.
EXAMPLES_DIR = os.path.join(os.path.dirname(HERE), "example_workflows")
API_DIR = os.path.join(EXAMPLES_DIR, "api")
INPUT_DIR = os.path.join(EXAMPLES_DIR, "input")  # the example pictures the ControlNet workflows load

# The file names users download.
TRANSFORMER_FILE = "z_image_turbo_bf16.safetensors"
TEXT_ENCODER_FILE = "qwen_3_4b.safetensors"
VAE_FILE = "ae.safetensors"
BASE_FILE = "z_image_bf16.safetensors"
TWINFLOW_FILE = "TwinFlow-Z-Image-Turbo_bf16.safetensors"
DISTILL_LORA_FILE = "Z-Image-Fun-Lora-Distill-4-Steps-2602-ComfyUI.safetensors"
CONTROLNET_FILE = "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors"
TILE_CONTROLNET_FILE = "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-8steps.safetensors"
# Files users make themselves (no download location): their own LoRA, the trainer's outputs.
LORA_FILE = "my_z_image_lora.safetensors"
STEP1_LORA_FILE = "z_image_turbo_2step_step1_lora.safetensors"
STEP2_LORA_FILE = "z_image_turbo_2step_step2_lora.safetensors"
BUNDLE_FILE = "z_image_turbo_2step_bundle.safetensors"
FILE_FOLDERS = {TRANSFORMER_FILE: "diffusion_models", BASE_FILE: "diffusion_models", TWINFLOW_FILE: "diffusion_models", TEXT_ENCODER_FILE: "text_encoders",
                VAE_FILE: "vae", DISTILL_LORA_FILE: "loras", LORA_FILE: "loras", STEP1_LORA_FILE: "loras", STEP2_LORA_FILE: "loras",
                CONTROLNET_FILE: "model_patches", TILE_CONTROLNET_FILE: "model_patches", BUNDLE_FILE: "zimage_bundles"}

# Download locations (the frontend offers them when a file is missing), checked against the publishers'
# repositories: workflows/model_downloads.py.
from .model_downloads import MODEL_DOWNLOADS  # noqa: E402

_FILE_INPUTS = ("unet_name", "clip_name", "vae_name", "lora_name", "model_name", "twinflow_name", "controlnet_name", "name")


def with_downloads(nodes: list[Node]) -> list[Node]:
    """Each loader node carries the download location of the file it names, as ComfyUI's templates do."""
    for node in nodes:
        names = [node.inputs.get(k) for k in _FILE_INPUTS]
        node.models = tuple(MODEL_DOWNLOADS[n] for n in names if n in MODEL_DOWNLOADS)
    return nodes


PROMPT = "A red fox sitting in fresh snow at sunrise, soft golden light, photograph, 85mm, shallow depth of field."
SETUP = (f"models/diffusion_models/{TRANSFORMER_FILE}\nmodels/text_encoders/{TEXT_ENCODER_FILE}\nmodels/vae/{VAE_FILE}\n\n"
         "Width and height: multiples of 16.")


def note(text: str, height: int = 260) -> Node:
    return Node(9, "Note", {"text": text}, "Read me", pos=(-380, 40), size=(340, height))


def native_template(model: tuple = (10, 0), prefix: str = "z-image-turbo") -> list[Node]:
    """Comfy-Org's Z-Image-Turbo graph: UNETLoader → ModelSamplingAuraFlow(3) → KSampler (8 steps, cfg 1,
    res_multistep, simple), CLIPLoader (lumina2), the negative zeroed, EmptySD3LatentImage, VAEDecode."""
    return [
        Node(1, "UNETLoader", {"unet_name": TRANSFORMER_FILE, "weight_dtype": "default"}, pos=(0, 0), size=(340, 90)),
        Node(2, "CLIPLoader", {"clip_name": TEXT_ENCODER_FILE, "type": "lumina2", "device": "default"}, pos=(0, 230), size=(340, 110)),
        Node(3, "VAELoader", {"vae_name": VAE_FILE}, pos=(0, 400), size=(340, 60)),
        Node(4, "CLIPTextEncode", {"clip": (2, 0), "text": PROMPT}, "Prompt", pos=(380, 140), size=(400, 200)),
        Node(11, "ConditioningZeroOut", {"conditioning": (4, 0)}, pos=(380, 360), size=(260, 30)),
        Node(5, "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(380, 440), size=(300, 110)),
        Node(10, "ModelSamplingAuraFlow", {"model": (1, 0), "shift": 3.0}, pos=(380, 0), size=(300, 60)),
        Node(6, "KSampler", {"model": model, "positive": (4, 0), "negative": (11, 0), "latent_image": (5, 0), "seed": 42, "steps": 8, "cfg": 1.0,
                             "sampler_name": "res_multistep", "scheduler": "simple", "denoise": 1.0}, pos=(820, 0), size=(320, 470)),
        Node(7, "VAEDecode", {"samples": (6, 0), "vae": (3, 0)}, pos=(1180, 0), size=(210, 50)),
        Node(8, "SaveImage", {"images": (7, 0), "filename_prefix": prefix}, pos=(1480, 0), size=(512, 560)),
    ]


def _node(nodes: list[Node], class_type: str) -> Node:
    return next(n for n in nodes if n.class_type == class_type)


def _without(nodes: list[Node], *class_types: str) -> list[Node]:
    return [n for n in nodes if n.class_type not in class_types]


def decode_and_save(first_id: int, samples: tuple, prefix: str, pos=(1180, 0), title: str = "") -> list[Node]:
    return [Node(first_id, "VAEDecode", {"samples": samples, "vae": (3, 0)}, title, pos=pos, size=(210, 50)),
            Node(first_id + 1, "SaveImage", {"images": (first_id, 0), "filename_prefix": prefix}, pos=(pos[0] + 300, pos[1]), size=(512, 560))]


def text_to_image() -> list[Node]:
    nodes = native_template()
    _node(nodes, "SaveImage").class_type = "ZImageSaveImage"
    _node(nodes, "ZImageSaveImage").inputs.update(format="png")
    return nodes + [note("Z-Image-Turbo text-to-image: Comfy-Org's native graph (8 steps, no CFG), saved by Z-Image Save Image, which writes the "
                         "prompt, seed, sampler, model and LoRAs with their hashes into the picture (image sites read it) next to the workflow.\n\n" + SETUP)]


def _lora_stack(node_id: int, model: tuple, pos=(380, -300)) -> Node:
    return Node(node_id, "ZImageLoraStack", {"model": model, "lora_1": LORA_FILE, "strength_1": 0.8, "lora_2": "None", "strength_2": 1.0,
                                             "lora_3": "None", "strength_3": 1.0, "lora_4": "None", "strength_4": 1.0}, pos=pos, size=(340, 260))


def text_to_image_with_loras() -> list[Node]:
    nodes = native_template()
    _node(nodes, "ModelSamplingAuraFlow").inputs["model"] = (12, 0)
    return nodes + [
        note("Z-Image-Turbo with a LoRA stack on the native graph.\n\n"
             f"Put LoRAs into models/loras (here: {LORA_FILE}). Any trainer's format loads, as ComfyUI's own weight patches: ai-toolkit, "
             "musubi-tuner (also the raw names native LoRA loaders drop), ComfyUI, diffusers/PEFT, DiffSynth, LyCORIS LoKr/LoHa. For a LoRA "
             "trained on Turbo that lost its 8-step sharpness, add the DistillPatch LoRA in slot 2.\n\nThe report lists every key that was not applied."),
        _lora_stack(12, (1, 0)),
        Node(13, "PreviewAny", {"source": (12, 1)}, "LoRA report", pos=(760, -300), size=(420, 200)),
    ]


def base_with_distill_lora() -> list[Node]:
    nodes = native_template(prefix="z-image-base-4step")
    _node(nodes, "UNETLoader").inputs["unet_name"] = BASE_FILE
    _node(nodes, "ModelSamplingAuraFlow").inputs["model"] = (12, 0)
    _node(nodes, "KSampler").inputs.update(steps=4)
    return nodes + [
        note("Z-Image (Base) in 4 steps with alibaba-pai's Z-Image-Fun-Lora-Distill (4-step) at strength 0.8, cfg 1, on the native graph.\n\n"
             f"models/diffusion_models/{BASE_FILE}\nmodels/loras/{DISTILL_LORA_FILE}\n\nThe 8-step distill LoRA: steps 8.", 300),
        Node(12, "ZImageLoraLoader", {"model": (1, 0), "lora_name": DISTILL_LORA_FILE, "strength": 0.8}, pos=(380, -200), size=(340, 110)),
        Node(13, "PreviewAny", {"source": (12, 1)}, "LoRA report", pos=(760, -300), size=(420, 200)),
    ]


TWINFLOW_NOTE = (
    "TwinFlow-Z-Image-Turbo in 2 model calls (inclusionAI, Apache-2.0).\n\n"
    f"models/diffusion_models/{TWINFLOW_FILE}\n\nLoad Diffusion Model reads the file but drops TwinFlow's second time embedder; "
    "Z-Image TwinFlow Patch adds it back to the MODEL (from the same file, or a diffusers folder, GGUF or fp8 repack). "
    "nfe 2 (up to 4), gap_end -1 = the authors' values, stochastic_ratio 1. step1_latent is step 1's guess of the image."
)


def _twinflow(model: tuple, first_id: int = 20, pos=(380, -220), prefix: str = "z-image-twinflow", title: str = "") -> list[Node]:
    return [
        Node(first_id, "UNETLoader", {"unet_name": TWINFLOW_FILE, "weight_dtype": "default"}, "TwinFlow", pos=(0, pos[1]), size=(340, 90)),
        Node(first_id + 1, "ZImageTwinFlowPatch", {"model": model, "twinflow_name": TWINFLOW_FILE}, pos=pos, size=(340, 80)),
        Node(first_id + 2, "ZImageTwinFlowSampler", {"model": (first_id + 1, 0), "positive": (4, 0), "latent_image": (5, 0), "seed": 42, "nfe": 2,
                                                     "gap_start": 0.001, "gap_end": -1.0, "stochastic_ratio": 1.0, "denoise": 1.0},
             title, pos=(820, pos[1]), size=(320, 300)),
        *decode_and_save(first_id + 3, (first_id + 2, 0), prefix, pos=(1180, pos[1])),
    ]


def twinflow() -> list[Node]:
    nodes = _without(native_template(), "UNETLoader", "ModelSamplingAuraFlow", "KSampler", "VAEDecode", "SaveImage")
    return nodes + [note(TWINFLOW_NOTE, 300), *_twinflow((20, 0), pos=(380, 0))]


def twinflow_custom_sampler() -> list[Node]:
    nodes = _without(native_template(), "UNETLoader", "ModelSamplingAuraFlow", "KSampler", "VAEDecode", "SaveImage")
    twin = _twinflow((20, 0), pos=(380, 0))[:2]
    return nodes + twin + [
        note("TwinFlow through ComfyUI's SamplerCustomAdvanced: the pack gives the SAMPLER (TwinFlow's update rule) and the SIGMAS "
             "(the authors' schedule); noise and guider are ComfyUI's own, so other guiders and noise nodes plug in.\n\n" + TWINFLOW_NOTE, 360),
        Node(30, "RandomNoise", {"noise_seed": 42}, pos=(380, 120), size=(300, 80)),
        Node(31, "BasicGuider", {"model": (21, 0), "conditioning": (4, 0)}, pos=(380, 240), size=(260, 50)),
        Node(32, "ZImageTwinFlowSamplerSelect", {"stochastic_ratio": 1.0}, pos=(380, 320), size=(300, 60)),
        Node(33, "ZImageTwinFlowScheduler", {"model": (21, 0), "nfe": 2, "gap_start": 0.001, "gap_end": -1.0, "denoise": 1.0}, pos=(380, 420), size=(300, 150)),
        Node(34, "SamplerCustomAdvanced", {"noise": (30, 0), "guider": (31, 0), "sampler": (32, 0), "sigmas": (33, 0), "latent_image": (5, 0)},
             pos=(820, 0), size=(300, 330)),
        *decode_and_save(35, (34, 0), "z-image-twinflow-custom"),
    ]


def twinflow_with_lora() -> list[Node]:
    nodes = _without(native_template(), "UNETLoader", "ModelSamplingAuraFlow", "KSampler", "VAEDecode", "SaveImage")
    twin = _twinflow((12, 0), pos=(380, 0), prefix="z-image-twinflow-lora")
    return nodes + twin + [
        note(TWINFLOW_NOTE + "\n\nLoRAs trained on Z-Image-Turbo apply to TwinFlow as to Turbo (models/loras).", 340),
        _lora_stack(12, (20, 0), pos=(380, -300)),
        Node(13, "PreviewAny", {"source": (12, 1)}, "LoRA report", pos=(760, -300), size=(420, 200)),
    ]


def turbo_vs_twinflow() -> list[Node]:
    nodes = native_template(prefix="z-image-turbo-8step")
    _node(nodes, "KSampler").title = "Turbo, 8 steps"
    return nodes + [note("Side by side: the same prompt and seed with Z-Image-Turbo in 8 steps (top) and TwinFlow in 2 (bottom).\n\n" + TWINFLOW_NOTE, 340),
                    *_twinflow((20, 0), pos=(380, 620), prefix="z-image-twinflow-2step", title="TwinFlow, 2 steps")]


TWO_STEP_NOTE = (
    "2-step step-decoupled generation (Turbo++ form): step 1 runs on step1_model for the whole batch, then step 2 on step2_model. "
    "The two MODELs can be one model twice (plain Turbo in 2 steps), two files, one base with a LoRA chain per step, or a bundle's "
    "two outputs; where they share a base, ComfyUI keeps one copy of the base weights and re-patches it between the steps.\n\n"
    "sigma_mid 0.5 with shift 3 is the Turbo schedule for 2 steps (the model sees σ 1.0 then 0.75). step1_latent is step 1's guess of the image."
)


def _two_step_sampler(node_id: int, step1: tuple, step2: tuple, title: str = "", pos=(820, 0)) -> Node:
    return Node(node_id, "ZImageTwoStepSampler", {"step1_model": step1, "step2_model": step2, "positive": (4, 0), "latent_image": (5, 0), "seed": 42,
                                                  "sigma_mid": 0.5, "shift": 3.0, "step2_rule": "euler", "denoise": 1.0}, title, pos=pos, size=(320, 300))


def two_step() -> list[Node]:
    nodes = _without(native_template(), "ModelSamplingAuraFlow", "KSampler", "VAEDecode", "SaveImage")
    return nodes + [note(TWO_STEP_NOTE, 320), _two_step_sampler(20, (1, 0), (1, 0)),
                    *decode_and_save(21, (20, 0), "z-image-2step"), *decode_and_save(23, (20, 1), "z-image-2step-step1", pos=(1180, 620), title="Decode step 1")]


def two_step_vs_eight_step() -> list[Node]:
    nodes = native_template(prefix="z-image-8step")
    _node(nodes, "KSampler").title = "8 steps"
    return nodes + [note("Side by side: the same prompt and seed in 8 steps (top) and in 2 steps (bottom).\n\n" + TWO_STEP_NOTE, 340),
                    _two_step_sampler(20, (1, 0), (1, 0), "2 steps", pos=(820, 620)), *decode_and_save(21, (20, 0), "z-image-2step", pos=(1180, 620))]


def two_step_distilled_loras() -> list[Node]:
    nodes = _without(native_template(), "ModelSamplingAuraFlow", "KSampler", "VAEDecode", "SaveImage")
    return nodes + [
        note("2-step generation with the per-step LoRAs zimage-distill (the pack's Turbo++ trainer) writes, each on its own native LoRA chain.\n\n"
             f"Copy step1_lora.safetensors and step2_lora.safetensors from the trainer's --out folder into models/loras (here {STEP1_LORA_FILE} and "
             f"{STEP2_LORA_FILE}). Keep sigma_mid, shift and step2_rule as trained (the trainer writes them into the files' header).\n\n" + TWO_STEP_NOTE, 400),
        Node(12, "LoraLoaderModelOnly", {"model": (1, 0), "lora_name": STEP1_LORA_FILE, "strength_model": 1.0}, "Step 1 LoRA", pos=(380, -300), size=(340, 90)),
        Node(13, "LoraLoaderModelOnly", {"model": (1, 0), "lora_name": STEP2_LORA_FILE, "strength_model": 1.0}, "Step 2 LoRA", pos=(380, -180), size=(340, 90)),
        _two_step_sampler(20, (12, 0), (13, 0)), *decode_and_save(21, (20, 0), "z-image-2step-distilled"),
    ]


def _bundle_sampler() -> Node:
    """The sampler with the bundle's own settings wired in (sigma_mid, shift, step2_rule as it was made)."""
    sampler = _two_step_sampler(20, (12, 0), (12, 1))
    sampler.inputs.update(sigma_mid=(12, 2), shift=(12, 3), step2_rule=(12, 4))
    return sampler


def two_step_bundle() -> list[Node]:
    nodes = _without(native_template(), "UNETLoader", "ModelSamplingAuraFlow", "KSampler", "VAEDecode", "SaveImage")
    return nodes + [
        note("2-step generation from a bundle (one file: the shared weights once, each step's own weights; zimage-distill writes one, "
             f"Z-Image Save 2-Step Bundle makes one from two MODELs).\n\nmodels/zimage_bundles/{BUNDLE_FILE}\n\n" + TWO_STEP_NOTE, 400),
        Node(12, "ZImageStepBundleLoader", {"bundle_name": BUNDLE_FILE}, pos=(0, 0), size=(340, 170)),
        _bundle_sampler(), *decode_and_save(21, (20, 0), "z-image-2step-bundle"),
    ]


CONTROL_IMAGES = {"canny": "canny_source.png", "depth": "depth_map.png", "pose": "pose_map.png", "inpaint": "inpaint_source.png", "tile": "tile_lowres.png"}
CONTROL_NOTE = (
    "Z-Image-Turbo with a Fun ControlNet Union ({what}) on the native graph.\n\n"
    "models/model_patches/{file}\n(1.0, 2.0, 2.1, 2.1 lite, Tile, 2601 and 2602 all load; the version is detected from the file; "
    "on 12-16 GB cards load it as fp8_e4m3fn).\n\n"
    "strength -1 = the version's default. {extra}"
)


def _controlled(kind: str, what: str, extra: str, hint: list[Node], apply_inputs: dict, control_file: str = CONTROLNET_FILE,
                latent: tuple | None = None, denoise: float = 1.0, extra_nodes: list[Node] = ()) -> list[Node]:
    nodes = native_template(prefix=f"z-image-{kind}")
    _node(nodes, "ModelSamplingAuraFlow").inputs["model"] = (21, 0)
    sampler = _node(nodes, "KSampler")
    sampler.inputs["denoise"] = denoise
    if latent is not None:
        sampler.inputs["latent_image"] = latent
        nodes = _without(nodes, "EmptySD3LatentImage")
    return nodes + [
        note(CONTROL_NOTE.format(what=what, file=control_file, extra=extra), 300),
        Node(20, "ZImageControlNetLoader", {"controlnet_name": control_file}, pos=(0, -560), size=(340, 130)),
        Node(22, "LoadImage", {"image": CONTROL_IMAGES[kind]}, "Control image", pos=(-380, -560), size=(340, 420)),
        *hint, *extra_nodes,
        Node(21, "ZImageControlNetApply", {"model": (1, 0), "controlnet": (20, 0), "vae": (3, 0), "strength": -1.0, "start_percent": 0.0,
                                           "end_percent": 1.0, **apply_inputs}, pos=(400, -560), size=(340, 320)),
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
                     Node(25, "VAEEncode", {"pixels": (24, 0), "vae": (3, 0)}, pos=(380, 440), size=(210, 50))])


PROMPT_LIST_NOTE = (
    "Z-Image-Turbo over a prompt list, in one queued prompt, on the native loaders.\n\n"
    "One prompt per line, or a .txt / .csv / .jsonl file from the input folder (csv/jsonl: 'prompt', optional 'negative' and "
    "'seed' columns). seed_mode: fixed, increment (a seed sweep: one prompt, repeat 10) or random (recorded in each picture).\n\n"
    "Each picture is saved with its metadata as soon as it is done; Cancel keeps the finished ones."
)


def prompt_list() -> list[Node]:
    loaders = [n for n in native_template() if n.class_type in ("UNETLoader", "CLIPLoader", "VAELoader")]
    return [
        note(PROMPT_LIST_NOTE),
        *loaders,
        Node(4, "ZImagePromptList", {"prompts": "A red fox sitting in fresh snow at sunrise, photograph.\nA lighthouse on a cliff at dusk, oil painting.\n"
                                                "A bowl of ramen on a wooden table, top view, studio light.", "seed": 42, "seed_mode": "increment", "repeat": 1,
                                     "file": "", "negative": ""}, pos=(380, 0), size=(400, 300)),
        Node(6, "ZImagePromptListGenerate", {"model": (1, 0), "clip": (2, 0), "vae": (3, 0), "prompt": (4, 0), "seed": (4, 2),
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
    "z_image_twinflow_custom_sampler": twinflow_custom_sampler,
    "z_image_twinflow_lora": twinflow_with_lora,
    "z_image_base_4step_distill_lora": base_with_distill_lora,
    "z_image_turbo_vs_twinflow": turbo_vs_twinflow,
    "z_image_turbo_prompt_list": prompt_list,
    "z_image_turbo_2step_distilled_loras": two_step_distilled_loras,
    "z_image_turbo_2step_bundle": two_step_bundle,
}


def render() -> dict[str, dict]:
    """{file name: JSON object} for every example workflow."""
    from .comfy_runtime import display_names, node_classes  # inside ComfyUI: its node classes give the widget order

    classes, names = node_classes(), display_names()
    files = {}
    for name, graph in WORKFLOWS.items():
        nodes = with_downloads(graph())
        files[f"{name}.json"] = to_ui(nodes, classes)
        files[f"{name}_api.json"] = to_api(nodes, classes, names)
    return files


# /object_info for the queue client's tests, which run without ComfyUI (tests/fake_comfy_server.py serves it)
OBJECT_INFO_PATH = os.path.join(os.path.dirname(HERE), "tests", "data", "example_object_info.json")
QUEUE_WORKFLOWS = ("z_image_turbo_text_to_image", "z_image_turbo_lora_stack")


def object_info() -> dict:
    """/object_info as a ComfyUI holding the example files answers it, for the node types of the
    workflows the queue client's tests send."""
    import tempfile

    import folder_paths

    from .comfy_runtime import node_classes
    from .graph_format import VIRTUAL_NODES

    classes = node_classes()
    types = sorted({n.class_type for name in QUEUE_WORKFLOWS for n in WORKFLOWS[name]() if n.class_type not in VIRTUAL_NODES})
    saved = {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()}
    with tempfile.TemporaryDirectory() as root:
        for name, folder in FILE_FOLDERS.items():
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            open(os.path.join(root, folder, name), "wb").close()
            folder_paths.folder_names_and_paths[folder] = ([os.path.join(root, folder)], saved.get(folder, ([], {".safetensors"}))[1] | {".safetensors"})
        folder_paths.filename_list_cache.clear()
        try:
            info = {name: _node_info(classes[name], name) for name in types}
        finally:
            folder_paths.folder_names_and_paths.update(saved)
            folder_paths.filename_list_cache.clear()
    return info


def _node_info(cls, name: str) -> dict:
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return cls.GET_NODE_INFO_V1()
    return {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES), "name": name,
            "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)))}


def workflow_path(file_name: str) -> str:
    return os.path.join(API_DIR if file_name.endswith("_api.json") else EXAMPLES_DIR, file_name)


def dumps(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    files = render()
    for folder in (EXAMPLES_DIR, API_DIR):  # workflows no longer described here go
        for name in os.listdir(folder):
            if name.endswith(".json") and name not in files:
                os.remove(os.path.join(folder, name))
    for name, obj in files.items():
        path = workflow_path(name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(dumps(obj))
        print("wrote", path)
    os.makedirs(os.path.dirname(OBJECT_INFO_PATH), exist_ok=True)
    with open(OBJECT_INFO_PATH, "w", encoding="utf-8") as fh:
        fh.write(dumps(object_info()))
    print("wrote", OBJECT_INFO_PATH)
    from ..nodes.extension import NODES
    from . import help_pages

    help_pages.write(help_pages.render(NODES, {name: graph() for name, graph in WORKFLOWS.items()}))
    print("wrote", len(NODES), "help pages in", help_pages.DOCS_DIR)


if __name__ == "__main__":
    main()
