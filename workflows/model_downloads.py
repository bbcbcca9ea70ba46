"""Where users download the files the example workflows name (ComfyUI's frontend offers these when a file
is missing). Each address was found in the publisher's own material: Comfy-Org's Z-Image templates
(workflow_templates: image_z_image_turbo.json, image_z_image.json), Hugging Face file and commit pages,
and alibaba-pai's model cards. The files users make themselves (their LoRAs, the trainer's outputs) have none."""

COMFY_ORG_TURBO = "https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files"
COMFY_ORG_BASE = "https://huggingface.co/Comfy-Org/z_image/resolve/main/split_files"
PAI_CONTROLNET = "https://huggingface.co/alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union-2.1/resolve/main"
PAI_DISTILL = "https://huggingface.co/alibaba-pai/Z-Image-Fun-Lora-Distill/resolve/main"
# inclusionAI publishes TwinFlow-Z-Image-Turbo as a diffusers folder; the single bf16 file users load in
# ComfyUI is a community repack (12.3 GB, the stock transformer plus t_embedder_2).
TWINFLOW_REPACK = "https://huggingface.co/DeepBeepMeep/Z-Image/resolve/main"

_FILES = [
    ("z_image_turbo_bf16.safetensors", f"{COMFY_ORG_TURBO}/diffusion_models", "diffusion_models"),
    ("qwen_3_4b.safetensors", f"{COMFY_ORG_TURBO}/text_encoders", "text_encoders"),
    ("ae.safetensors", f"{COMFY_ORG_TURBO}/vae", "vae"),
    ("z_image_bf16.safetensors", f"{COMFY_ORG_BASE}/diffusion_models", "diffusion_models"),
    ("TwinFlow-Z-Image-Turbo_bf16.safetensors", TWINFLOW_REPACK, "diffusion_models"),
    ("Z-Image-Fun-Lora-Distill-4-Steps-2602-ComfyUI.safetensors", PAI_DISTILL, "loras"),
    ("Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors", PAI_CONTROLNET, "model_patches"),
    ("Z-Image-Turbo-Fun-Controlnet-Tile-2.1-8steps.safetensors", PAI_CONTROLNET, "model_patches"),
]

MODEL_DOWNLOADS = {name: {"name": name, "url": f"{base}/{name}", "directory": folder} for name, base, folder in _FILES}
