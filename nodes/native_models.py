"""Native MODEL and VAE from files native loaders cannot read: the pack reads the files
(loaders/), ComfyUI builds its own models from the state dicts (``comfy.sd``), so what comes out is
ComfyUI's NextDiT in ComfyUI's patcher (dynamic where ComfyUI makes it so) and its FLUX VAE. (A CLIP from a
diffusers folder's text_encoder/ is not here yet: ComfyUI builds Qwen3-4B at its full 36 layers, too big to
test on these machines.)

What needs the pack here (native UNETLoader / CLIPLoader / VAELoader read the single files Comfy-Org
publishes, quantised ones included): diffusers folders, whose weights are split over shards and named
the diffusers way (ComfyUI converts the names; it does not read folders).
"""

from __future__ import annotations

import glob
import os

import comfy.sd

from ..loaders.errors import ZImageInputError
from ..loaders.safetensors_io import diffusers_component_folder, open_safetensors

TRANSFORMER_WHAT = "Z-Image transformer (diffusers folder)"
VAE_WHAT = "Z-Image VAE (diffusers folder)"


def read_folder_state_dict(folder: str, what: str) -> dict:
    """Every tensor of a diffusers / transformers component folder's safetensors shards, memory-mapped."""
    shards = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not shards:
        raise ZImageInputError(what, f"a folder '{os.path.basename(folder)}' without .safetensors weights", "a diffusers component folder",
                               "download the folder's weight files (the .safetensors shards) too")
    state = {}
    for shard in shards:
        with open_safetensors(shard, what) as handle:
            state.update({key: handle.get_tensor(key) for key in handle.keys()})
    return state


def load_transformer_folder(path: str, model_options: dict | None = None):
    """A Z-Image MODEL from a diffusers folder (the pipeline folder or its ``transformer/``)."""
    folder = diffusers_component_folder(path, "transformer", TRANSFORMER_WHAT, "z_image_turbo_bf16.safetensors")
    model = comfy.sd.load_diffusion_model_state_dict(read_folder_state_dict(folder, TRANSFORMER_WHAT), model_options=model_options or {})
    if model is None:
        raise ZImageInputError(TRANSFORMER_WHAT, f"'{os.path.basename(path)}', which ComfyUI does not recognise as a Z-Image transformer",
                               "Z-Image-Turbo's or Z-Image-Base's transformer/ folder", "pick the Z-Image folder")
    return model


def load_vae_folder(path: str):
    """ComfyUI's FLUX VAE from a diffusers folder's ``vae/`` (ComfyUI converts diffusers' names)."""
    folder = diffusers_component_folder(path, "vae", VAE_WHAT, "ae.safetensors")
    vae = comfy.sd.VAE(sd=read_folder_state_dict(folder, VAE_WHAT))
    vae.throw_exception_if_invalid()
    return vae
