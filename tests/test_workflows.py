"""The example workflows validate against the node definitions as ComfyUI validates a prompt, and run
headless on tiny models saved under the real file names."""

import copy
import glob
import json
import os

import pytest
import torch
from PIL import Image

from zimage_pack.workflows import build
from zimage_pack.workflows.headless import run_prompt, ui_to_api, validate_prompt

WORKFLOW_DIR = build.EXAMPLES_DIR
API_FILES = sorted(glob.glob(os.path.join(build.API_DIR, "*_api.json")))
UI_FILES = sorted(glob.glob(build.workflow_path("*.json")))
T2I_API = build.workflow_path("z_image_turbo_text_to_image_api.json")


def _small(prompt: dict) -> dict:
    """The same graph at 64×48 so it runs in a second on the CPU."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        if node["class_type"] in ("ZImageEmptyLatent", "EmptySD3LatentImage"):
            node["inputs"].update(width=64, height=48, batch_size=2)
        if node["class_type"] in ("ImageScale", "ZImagePromptListGenerate"):
            node["inputs"].update(width=64, height=48)
    return prompt


def test_there_are_workflows_in_both_formats():
    assert API_FILES and UI_FILES
    assert {os.path.basename(f)[: -len("_api.json")] for f in API_FILES} == {os.path.basename(f)[: -len(".json")] for f in UI_FILES}


def test_committed_workflows_equal_the_generator_output():
    for name, obj in build.render().items():
        with open(build.workflow_path(name), encoding="utf-8") as fh:
            assert fh.read() == build.dumps(obj), f"{name} is stale: run python -m zimage_pack.workflows.build"


@pytest.mark.parametrize("path", API_FILES, ids=os.path.basename)
def test_api_workflow_validates_and_runs(path, real_named_models, monkeypatch):
    monkeypatch.setenv("ZIMAGE_OUTPUT_DIR", str(real_named_models / "output"))
    prompt = json.load(open(path, encoding="utf-8"))
    assert validate_prompt(prompt) == []
    _, ui = run_prompt(_small(prompt))
    # native SaveImage's stub shows paths; our savers show ComfyUI's {filename, subfolder, type}
    saved = [p if isinstance(p, str) else str(real_named_models / "output" / p["subfolder"] / p["filename"])
             for node_ui in ui.values() for p in node_ui.get("images", [])]
    batch = 2 if any(n["class_type"] == "ZImageEmptyLatent" for n in prompt.values()) else 1  # _small's batch, or one loaded image
    listed = sum(len(n["inputs"]["prompts"].splitlines()) for n in prompt.values() if n["class_type"] == "ZImagePromptList")
    assert len(saved) == batch * sum(node["class_type"] == "SaveImage" for node in prompt.values()) + listed
    image = Image.open(saved[0])
    assert image.size == (64, 48)
    assert "prompt" in image.info  # the graph travels with the PNG, as ComfyUI does


@pytest.mark.parametrize("path", UI_FILES, ids=os.path.basename)
def test_ui_workflow_matches_node_definitions(path, real_named_models):
    workflow = json.load(open(path, encoding="utf-8"))
    prompt = ui_to_api(workflow)
    assert validate_prompt(prompt) == []
    api = json.load(open(build.workflow_path(os.path.basename(path).replace(".json", "_api.json")), encoding="utf-8"))
    assert {k: v["inputs"] for k, v in prompt.items()} == {k: v["inputs"] for k, v in api.items()}


def test_workflows_name_the_real_files():
    text = open(T2I_API, encoding="utf-8").read()
    for name in (build.TRANSFORMER_FILE, build.TEXT_ENCODER_FILE, build.VAE_FILE):
        assert name in text


def test_validation_catches_each_comfyui_error(real_named_models):
    prompt = json.load(open(T2I_API, encoding="utf-8"))
    ids = {node["class_type"]: key for key, node in prompt.items()}
    sampler, latent, loader = ids["ZImageTurboSampler"], ids["ZImageEmptyLatent"], ids["ZImageTransformerLoader"]

    def errors_after(change):
        broken = copy.deepcopy(prompt)
        change(broken)
        return {kind for _, kind, _ in validate_prompt(broken)}

    assert "missing_node_type" in errors_after(lambda p: p[sampler].update(class_type="NoSuchNode"))
    assert "required_input_missing" in errors_after(lambda p: p[sampler]["inputs"].pop("positive"))
    assert "bad_linked_input" in errors_after(lambda p: p[sampler]["inputs"].update(model=["999", 0]))
    assert "return_type_mismatch" in errors_after(lambda p: p[sampler]["inputs"].update(model=[latent, 0]))
    assert "value_smaller_than_min" in errors_after(lambda p: p[sampler]["inputs"].update(steps=0))
    assert "value_bigger_than_max" in errors_after(lambda p: p[sampler]["inputs"].update(denoise=1.5))
    assert "value_not_in_list" in errors_after(lambda p: p[loader]["inputs"].update(model_name="missing.safetensors"))
    assert "invalid_input_type" in errors_after(lambda p: p[sampler]["inputs"].update(seed="abc"))


def test_native_empty_sd3_latent_feeds_our_sampler(real_named_models):
    prompt = _small(json.load(open(T2I_API, encoding="utf-8")))
    ids = {node["class_type"]: key for key, node in prompt.items()}
    prompt[ids["ZImageEmptyLatent"]]["class_type"] = "EmptySD3LatentImage"
    ours = run_prompt(_small(json.load(open(T2I_API, encoding="utf-8"))))[0][ids["ZImageTurboSampler"]][0]["samples"]
    native = run_prompt(prompt)[0][ids["ZImageTurboSampler"]][0]["samples"]
    assert torch.equal(ours, native)


def test_size_not_multiple_of_16_fails_at_queue_time(real_named_models):
    prompt = json.load(open(T2I_API, encoding="utf-8"))
    latent = next(k for k, v in prompt.items() if v["class_type"] == "ZImageEmptyLatent")
    prompt[latent]["inputs"]["width"] = 1000
    (error,) = validate_prompt(prompt)
    assert error[1] == "custom_validation_failed" and "width" in error[2] and "multiple of 16" in error[2]


def test_lora_workflow_reports_every_key(real_named_models):
    prompt = _small(json.load(open(build.workflow_path("z_image_turbo_lora_stack_api.json"), encoding="utf-8")))
    outputs, ui = run_prompt(prompt)
    report = next(node_ui["text"][0] for node_ui in ui.values() if "text" in node_ui)
    assert f"{build.LORA_FILE} (musubi-tuner / kohya): applied 48 of 48 keys" in report


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_pictures_carry_how_they_were_made(real_named_models, monkeypatch, fmt):
    """Z-Image Save Image writes ComfyUI's prompt/workflow (the graph comes back from the picture) and
    the parameters text with the model's and LoRA's SHA-256; the reader node returns them."""
    import hashlib

    from zimage_pack.loaders.image_metadata import read_metadata
    from zimage_pack.nodes.image_nodes import ZImageReadMetadata

    monkeypatch.setenv("ZIMAGE_OUTPUT_DIR", str(real_named_models / "output"))
    name = "z_image_turbo_lora_stack"
    prompt = _small(json.load(open(build.workflow_path(f"{name}_api.json"), encoding="utf-8")))
    workflow = json.load(open(build.workflow_path(f"{name}.json"), encoding="utf-8"))
    save_id = next(k for k, n in prompt.items() if n["class_type"] == "SaveImage")
    prompt[save_id] = {"class_type": "ZImageSaveImage", "inputs": {"images": prompt[save_id]["inputs"]["images"], "filename_prefix": "meta/z", "format": fmt}}
    results, ui = run_prompt(prompt, extra_pnginfo={"workflow": workflow})
    files = ui[save_id]["images"]
    assert len(files) == 2 and all(f["filename"].endswith("." + fmt) for f in files)
    path = real_named_models / "output" / files[0]["subfolder"] / files[0]["filename"]
    meta = read_metadata(str(path))
    assert meta["prompt"] == prompt and meta["workflow"] == workflow  # the graph travels with the picture
    text = meta["parameters"]
    assert text == results[save_id][0]
    sampler = next(n for n in prompt.values() if n["class_type"] == "ZImageTurboSampler")["inputs"]
    encode = next(n for n in prompt.values() if n["class_type"] == "ZImageTextEncode")["inputs"]
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    model_hash = digest(real_named_models / "diffusion_models" / build.TRANSFORMER_FILE)
    lora_hash = digest(real_named_models / "loras" / build.LORA_FILE)
    assert text.startswith(encode["text"] + "\n")
    for fragment in (f"Steps: {sampler['steps']}", f"Seed: {sampler['seed']}", "CFG scale: 1.0", "Size: 64x48", f"Model hash: {model_hash[:10]}",
                     f"Model: {build.TRANSFORMER_FILE}", f"{build.LORA_FILE[:-12]}: {lora_hash[:12]}", f"{build.LORA_FILE[:-12]}: 0.8"):
        assert fragment in text, fragment
    monkeypatch.setenv("ZIMAGE_INPUT_DIR", str(real_named_models / "output"))  # the reader takes names in the input folder only
    parameters, prompt_json, workflow_json = ZImageReadMetadata().read(f"{files[0]['subfolder']}/{files[0]['filename']}")
    assert parameters == text and json.loads(prompt_json) == prompt and json.loads(workflow_json) == workflow


def test_controlnet_and_negative_prompt_are_recorded(real_named_models, monkeypatch):
    from zimage_pack.loaders.image_metadata import read_metadata

    monkeypatch.setenv("ZIMAGE_OUTPUT_DIR", str(real_named_models / "output"))
    prompt = _small(json.load(open(build.workflow_path("z_image_controlnet_canny_api.json"), encoding="utf-8")))
    sampler_id = next(k for k, n in prompt.items() if n["class_type"] == "ZImageTurboSampler")
    prompt["90"] = {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": "blurry, watermark"}}
    prompt[sampler_id]["inputs"].update(negative=["90", 0], cfg=3.0)
    save_id = next(k for k, n in prompt.items() if n["class_type"] == "SaveImage")
    prompt[save_id] = {"class_type": "ZImageSaveImage", "inputs": {"images": prompt[save_id]["inputs"]["images"], "filename_prefix": "cn", "format": "png"}}
    _, ui = run_prompt(prompt)
    text = read_metadata(str(real_named_models / "output" / ui[save_id]["images"][0]["filename"]))["parameters"]
    assert "Negative prompt: blurry, watermark" in text and "CFG scale: 3.0" in text
    assert f'ControlNets: "{build.CONTROLNET_FILE[:-12]}: -1.0 (0.0-1.0)"' in text


def test_ui_workflows_carry_download_locations():
    """As ComfyUI's templates: properties.models (name, url, directory) on the loaders of known files."""
    workflow = json.load(open(build.workflow_path("z_image_turbo_text_to_image.json"), encoding="utf-8"))
    models = {m["name"]: m for n in workflow["nodes"] for m in n.get("properties", {}).get("models", [])}
    assert set(models) == {build.TRANSFORMER_FILE, build.TEXT_ENCODER_FILE, build.VAE_FILE}
    for name, entry in models.items():
        assert entry["url"].startswith("https://huggingface.co/Comfy-Org/") and entry["url"].endswith("/" + name)
    assert models[build.TRANSFORMER_FILE]["directory"] == "diffusion_models" and models[build.VAE_FILE]["directory"] == "vae"


def test_controlnet_workflows_ship_their_example_pictures():
    import numpy as np

    from zimage_pack.workflows.example_inputs import PICTURES

    assert set(build.CONTROL_IMAGES.values()) <= set(PICTURES)
    for name, draw in PICTURES.items():
        with Image.open(os.path.join(build.INPUT_DIR, name)) as committed:
            assert np.array_equal(np.asarray(committed), np.asarray(draw())), f"{name} is stale: run python -m zimage_pack.workflows.example_inputs"
    for path in API_FILES:
        for node in json.load(open(path, encoding="utf-8")).values():
            if node["class_type"] == "LoadImage":
                assert os.path.isfile(os.path.join(build.INPUT_DIR, node["inputs"]["image"])), (path, node["inputs"]["image"])


def test_templates_browser_lists_only_ui_workflows():
    """ComfyUI lists <pack>/example_workflows/*.json (and other folder names) as templates: only UI forms may be there."""
    for path in glob.glob(os.path.join(os.path.dirname(WORKFLOW_DIR), "*", "*.json")):
        if os.path.basename(os.path.dirname(path)) in ("example_workflows", "example", "examples", "workflow", "workflows"):
            assert "nodes" in json.load(open(path, encoding="utf-8")), f"{path} would be listed as a template but is not a UI workflow"


def test_pictures_from_the_native_template_carry_its_models_loras_and_controlnet(tmp_path):
    """Comfy-Org's Z-Image graph (UNETLoader → ModelSamplingAuraFlow → LoRAs → native Fun ControlNet →
    KSampler): what Save Image writes names the files, their hashes, strengths, shift and sampler."""
    import hashlib

    from zimage_pack.loaders.image_metadata import generation_parameters, parameters_text

    files = {}
    for folder, name in (("diffusion_models", "z_image_turbo_bf16.safetensors"), ("loras", "style.safetensors"), ("loras", "detail.safetensors"),
                         ("model_patches", "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors")):
        path = tmp_path / folder / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(name.encode() * 3)
        files[(folder, name)] = str(path)
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "3": {"class_type": "LoraLoader", "inputs": {"model": ["2", 0], "clip": ["9", 0], "lora_name": "style.safetensors", "strength_model": 0.7, "strength_clip": 1.0}},
        "4": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["3", 0], "lora_name": "detail.safetensors", "strength_model": 0.4}},
        "5": {"class_type": "ModelPatchLoader", "inputs": {"name": "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors"}},
        "6": {"class_type": "ZImageFunControlnet", "inputs": {"model": ["4", 0], "model_patch": ["5", 0], "vae": ["10", 0], "strength": 0.9}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["9", 0], "text": "a lighthouse at dusk"}},
        "8": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
        "9": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "11": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "positive": ["7", 0], "negative": ["7", 0], "latent_image": ["8", 0], "seed": 42,
                                                   "steps": 8, "cfg": 1.0, "sampler_name": "res_multistep", "scheduler": "simple", "denoise": 1.0}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["10", 0]}},
        "13": {"class_type": "ZImageSaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "z", "format": "png"}},
    }
    params = generation_parameters(graph, "13", lambda folder, name: files.get((folder, name)))
    digest = {key: hashlib.sha256(open(path, "rb").read()).hexdigest() for key, path in files.items()}
    assert params["model"] == "z_image_turbo_bf16.safetensors" and params["model_hash"] == digest[("diffusion_models", "z_image_turbo_bf16.safetensors")]
    assert [(e["name"], e["strength"], e["hash"]) for e in params["loras"]] == [
        ("style.safetensors", 0.7, digest[("loras", "style.safetensors")]), ("detail.safetensors", 0.4, digest[("loras", "detail.safetensors")])]
    assert params["controlnets"][0]["name"] == "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors" and params["controlnets"][0]["strength"] == 0.9
    assert params["shift"] == 3.0 and params["seed"] == 42 and params["size"] == (1024, 768) and params["prompt"] == "a lighthouse at dusk"
    text = parameters_text(params)
    for fragment in ("Steps: 8", "Sampler: res_multistep", "Schedule type: simple", "Shift: 3.0", "Model: z_image_turbo_bf16.safetensors",
                     'LoRAs: "style: 0.7, detail: 0.4"', "Z-Image-Turbo-Fun-Controlnet-Union-2.1: 0.9 (0.0-1.0)"):
        assert fragment in text, (fragment, text)
