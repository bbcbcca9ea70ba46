"""The pack's node category, and its one socket type of its own: inside ComfyUI the models are native (MODEL,
CLIP, VAE); the ControlNet keeps a type of its own (ComfyUI's ModelPatchLoader gives another object)."""

CATEGORY = "Z-Image"
ZIMAGE_CONTROLNET = "ZIMAGE_CONTROLNET"
