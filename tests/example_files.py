"""Every file the example workflows name, made from a seed under the names users download, in the shapes
ComfyUI's native loaders need: the real-server tests run the workflows as shipped (UNETLoader, CLIPLoader,
VAELoader and the pack's nodes), and ComfyUI builds Z-Image, Qwen3-4B and the FLUX VAE at their real sizes.

- transformers (Turbo, Base, TwinFlow): thin real-width (dim 3840, one layer, 2 + 2 refiners, caption
  features 2560 as Qwen3-4B gives), bf16, ~1.9 GB; Base is a hard link to Turbo's file;
- text encoder: a full-shape Qwen3-4B in fp8 (4 GB; values from a seeded pool: tests/full_size_files.py);
- VAE: the FLUX.1 VAE at its real size; LoRAs for the thin transformer; ControlNets: a 2.1 lite at real
  width (3 control layers and the 2 refiner blocks); a 2-step bundle of two thin transformers.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from full_size_files import qwen3_4b_shapes, write_pooled_safetensors

THIN_2560 = dict(dim=3840, n_layers=1, n_refiner_layers=2, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, axes_dims=[32, 48, 48])
FLUX_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2)


def write_example_files(models, inputs) -> None:
    from PIL import Image

    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders.demo_loras import write_lora
    from zimage_pack.loaders.step_decoupled import StepSettings, write_bundle_file
    from zimage_pack.workflows import build

    models, inputs = Path(models), Path(inputs)
    for folder in ("diffusion_models", "text_encoders", "vae", "loras", "model_patches", "zimage_bundles"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    turbo = dm.make_transformer(seed=0, **THIN_2560).to(torch.bfloat16)
    dm.write_transformer(turbo, str(models / "diffusion_models" / build.TRANSFORMER_FILE))
    os.link(models / "diffusion_models" / build.TRANSFORMER_FILE, models / "diffusion_models" / build.BASE_FILE)
    for name, fmt in ((build.LORA_FILE, "musubi"), (build.DISTILL_LORA_FILE, "peft"), (build.STEP1_LORA_FILE, "peft"), (build.STEP2_LORA_FILE, "peft")):
        write_lora(turbo, str(models / "loras" / name), fmt, seed=len(name))
    second = dm.make_transformer(seed=1, **THIN_2560).to(torch.bfloat16)
    first_state, second_state = turbo.state_dict(), second.state_dict()
    second_state = {k: (second_state[k] if ".feed_forward." in k else v) for k, v in first_state.items()}  # step 2 differs in its FFNs
    write_bundle_file(first_state, second_state, str(models / "zimage_bundles" / build.BUNDLE_FILE), StepSettings(), dict(turbo.config))
    del turbo, second, first_state, second_state
    twin = dm.make_twinflow_transformer(seed=9, **THIN_2560).to(torch.bfloat16)
    dm.write_transformer(twin, str(models / "diffusion_models" / build.TWINFLOW_FILE))
    del twin
    write_pooled_safetensors(str(models / "text_encoders" / build.TEXT_ENCODER_FILE), qwen3_4b_shapes(), seed=1, dtype=torch.float8_e4m3fn)
    dm.write_vae(dm.make_vae(seed=2, **FLUX_VAE), str(models / "vae" / build.VAE_FILE))
    controlnet = dm.make_controlnet("2.1 lite", seed=5, dim=3840, n_heads=30).to(torch.bfloat16)
    dm.write_controlnet(controlnet, str(models / "model_patches" / build.CONTROLNET_FILE))
    os.link(models / "model_patches" / build.CONTROLNET_FILE, models / "model_patches" / build.TILE_CONTROLNET_FILE)
    del controlnet
    inputs.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(build.INPUT_DIR):  # the example pictures at 128 px: the same content, a sixty-fourth of the pixels
        with Image.open(os.path.join(build.INPUT_DIR, name)) as picture:
            picture.resize((128, 128), Image.LANCZOS).save(inputs / name)


def shrink_workflow(prompt: dict) -> dict:
    """The same graph at 64×48 with one short prompt text, so it runs in seconds on the CPU (the text
    encoder is a full-size Qwen3-4B: one prompt text lets ComfyUI's cache encode it once per server)."""
    import copy

    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("ZImageEmptyLatent", "EmptySD3LatentImage", "ImageScale", "ZImagePromptListGenerate"):
            inputs.update(width=64, height=48)
        if node["class_type"] == "CLIPTextEncode":
            inputs["text"] = "a red fox"
        if node["class_type"] == "ZImagePromptList":
            inputs["prompts"] = "a red fox\na lighthouse"
    return prompt
