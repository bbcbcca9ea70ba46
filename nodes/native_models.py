"""Native MODEL, CLIP and VAE from files native loaders cannot read: the pack reads the files
(loaders/), ComfyUI builds its own models from the state dicts (``comfy.sd``), so what comes out is
ComfyUI's NextDiT in ComfyUI's patcher (dynamic where ComfyUI makes it so), its Qwen3-4B and its FLUX VAE.

What needs the pack (native UNETLoader / CLIPLoader / VAELoader read the single files Comfy-Org publishes,
quantised ones included, and this module hands those to ComfyUI unchanged):
- diffusers folders, whose weights are split over shards (ComfyUI converts diffusers' names, but does
  not read folders);
- single files under a prefix ComfyUI does not strip (``transformer.``, ``model.``, a text encoder without
  ``model.``);
- TwinFlow-Z-Image-Turbo files: UNETLoader drops ``t_embedder_2``; here it becomes the TwinFlow patch;
- GGUF transformers and Qwen3-4B text encoders, held quantised (nodes/native_gguf.py).
"""

from __future__ import annotations

import glob
import os

import comfy.sd
import comfy.utils
import torch

from ..loaders import twinflow
from ..loaders.errors import ZImageInputError
from ..loaders.gguf_files import is_gguf
from ..loaders.model_files import describe_foreign_keys, strip_prefix
from ..loaders.safetensors_io import diffusers_component_folder, open_safetensors, require_file

TRANSFORMER_WHAT = "Z-Image transformer file"
TEXT_ENCODER_WHAT = "Z-Image text encoder file (Qwen3-4B)"
VAE_WHAT = "Z-Image VAE file"

# UNETLoader's weight_dtype choices, with the same meaning
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}

# prefixes ComfyUI strips itself (model_detection.unet_prefix_from_state_dict) and those it does not
_COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_OTHER_PREFIXES = ("transformer.", "model.", "extended_weights.")
_TRANSFORMER_SIGNATURE = ("cap_embedder.1.weight", "t_embedder.mlp.0.weight")
_TE_PREFIXES = ("model.", "text_model.model.", "qwen3_4b.transformer.model.")


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


def read_file_state_dict(path: str, what: str) -> tuple[dict, dict | None]:
    """(tensors, header metadata) of a single safetensors file, as ComfyUI's own loaders read it."""
    require_file(path, what)
    try:
        return comfy.utils.load_torch_file(path, return_metadata=True)
    except Exception as err:  # a truncated or foreign file: ComfyUI's reader raises many kinds
        raise ZImageInputError(what, f"'{os.path.basename(path)}', which cannot be read ({type(err).__name__})",
                               "a complete .safetensors file", "download the file again") from err


def transformer_state_dict(state: dict, source: str) -> dict:
    """The state dict ComfyUI's loader reads: the file's prefix made one ComfyUI strips, TwinFlow's
    ``t_embedder_2`` (and its scales) left out — it becomes the TwinFlow patch."""
    rest = {k: v for k, v in state.items() if twinflow.KEY not in k}
    prefix = strip_prefix(list(rest), _COMFY_PREFIXES + _OTHER_PREFIXES)
    short = {k[len(prefix):] for k in rest if k.startswith(prefix)}
    if not all(sig in short for sig in _TRANSFORMER_SIGNATURE) or not any(k.startswith("layers.") for k in short):
        looks_like, use_instead = describe_foreign_keys(list(state))
        raise ZImageInputError(TRANSFORMER_WHAT, f"'{source}' looks like {looks_like}",
                               "a Z-Image transformer (keys cap_embedder.*, t_embedder.*, layers.N.*)", f"use {use_instead}")
    if prefix not in _COMFY_PREFIXES:
        rest = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in rest.items()}
    for pad in ("x_pad_token", "cap_pad_token"):  # some exports store them 1-D
        for key in (pad, prefix + pad):
            if key in rest and rest[key].ndim == 1:
                rest[key] = rest[key].unsqueeze(0)
    return rest


def load_transformer_native(path: str, weight_dtype: str = "default", disable_dynamic: bool = False):
    """A Z-Image MODEL from a single file (any prefix; TwinFlow's embedder as its patch), a diffusers
    folder (the pipeline folder or its ``transformer/``) or a GGUF file (held quantised)."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ZImageInputError("weight_dtype", repr(weight_dtype), f"one of {sorted(WEIGHT_DTYPES)}", "pick one from the list")
    options = {}
    if WEIGHT_DTYPES[weight_dtype] is not None:
        options["dtype"] = WEIGHT_DTYPES[weight_dtype]
    if weight_dtype == "fp8_e4m3fn_fast":
        options["fp8_optimizations"] = True
    name = os.path.basename(path.rstrip(os.sep))
    if not os.path.isdir(path) and is_gguf(path):
        from .native_gguf import _load_transformer as load_gguf  # only GGUF users pay for the gguf reader

        model = load_gguf(path, disable_dynamic=disable_dynamic)
    else:
        if os.path.isdir(path):
            folder = diffusers_component_folder(path, "transformer", TRANSFORMER_WHAT, "z_image_turbo_bf16.safetensors")
            state, metadata = read_folder_state_dict(folder, TRANSFORMER_WHAT), None
        else:
            state, metadata = read_file_state_dict(path, TRANSFORMER_WHAT)
        model = comfy.sd.load_diffusion_model_state_dict(transformer_state_dict(state, name), model_options=options, metadata=metadata,
                                                         disable_dynamic=disable_dynamic)
        if model is None:
            raise ZImageInputError(TRANSFORMER_WHAT, f"'{name}', which ComfyUI does not recognise as a Z-Image transformer",
                                   "Z-Image-Turbo's, Z-Image-Base's or TwinFlow-Z-Image-Turbo's transformer", "pick a Z-Image file")
    embedder = twinflow.read_embedder(path)  # TwinFlow: in any layout (quantised ones dequantised), read alone
    if embedder is not None:
        from .native_twinflow import add_twinflow

        model = add_twinflow(model, embedder)
    return _with_cache_init(model, path, weight_dtype)


def _with_cache_init(model, path: str, weight_dtype: str):
    # how ComfyUI makes a fresh copy of this MODEL (a non-dynamic delegate for hooks, multi-GPU work units),
    # as UNETLoader's models carry it; it is called with disable_dynamic=True
    model.cached_patcher_init = (load_transformer_native, (path, weight_dtype))
    return model


def text_encoder_state_dict(path: str) -> dict:
    """A Qwen3-4B's tensors under the names of ComfyUI's ``qwen_3_4b.safetensors`` (``model.layers.N…``),
    from a diffusers folder's ``text_encoder/`` (shards, names without ``model.``) or a single file under
    any of the prefixes trainers use."""
    if os.path.isdir(path):
        folder = diffusers_component_folder(path, "text_encoder", TEXT_ENCODER_WHAT, "qwen_3_4b.safetensors")
        state = read_folder_state_dict(folder, TEXT_ENCODER_WHAT)
    else:
        state, _ = read_file_state_dict(path, TEXT_ENCODER_WHAT)
    prefix = strip_prefix([k for k in state if not k.startswith("lm_head.")], _TE_PREFIXES)
    named = {"model." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith("lm_head.")}
    if "model.embed_tokens.weight" not in named or "model.layers.0.self_attn.q_norm.weight" not in named:
        looks_like, use_instead = describe_foreign_keys(list(state))
        raise ZImageInputError(TEXT_ENCODER_WHAT, f"'{os.path.basename(path.rstrip(os.sep))}' looks like {looks_like}",
                               "Qwen3-4B (keys model.embed_tokens, model.layers.N.self_attn.q_norm …)", f"use {use_instead}")
    return named


def text_encoder_config(state: dict) -> dict:
    """Qwen3's sizes read off the shapes, for ComfyUI's ``qwen3_4b_model_config`` option (its Qwen3-4B is built
    at 36 layers otherwise; a real file gives exactly its defaults): layers, intermediate size, vocabulary."""
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("model.layers."))
    return {"num_hidden_layers": layers, "intermediate_size": int(state["model.layers.0.mlp.up_proj.weight"].shape[0]),
            "vocab_size": int(state["model.embed_tokens.weight"].shape[0])}


def check_text_encoder_width(state: dict, source: str) -> None:
    hidden = int(state["model.embed_tokens.weight"].shape[1])
    if hidden != 2560:
        raise ZImageInputError(TEXT_ENCODER_WHAT, f"'{source}', a Qwen3 of hidden size {hidden}", "Qwen3-4B (hidden size 2560)",
                               "pick the Qwen3-4B text encoder Z-Image uses (qwen_3_4b.safetensors)")


def load_text_encoder_native(path: str, embedding_directory=None):
    """ComfyUI's Z-Image CLIP (Qwen3-4B with its bundled tokenizer and Z-Image's template), as
    CLIPLoader(type lumina2) builds it, from the state dict above; a GGUF Qwen3-4B held quantised."""
    if not os.path.isdir(path) and is_gguf(path):
        from .native_gguf import load_gguf_text_encoder

        return load_gguf_text_encoder(path, embedding_directory)
    state = text_encoder_state_dict(path)
    check_text_encoder_width(state, os.path.basename(path.rstrip(os.sep)))
    return comfy.sd.load_text_encoder_state_dicts([state], embedding_directory=embedding_directory, clip_type=comfy.sd.CLIPType.LUMINA2,
                                                  model_options={"qwen3_4b_model_config": text_encoder_config(state)})


def load_vae_native(path: str):
    """ComfyUI's FLUX VAE from a single file or a diffusers folder's ``vae/`` (ComfyUI converts diffusers' names)."""
    if os.path.isdir(path):
        folder = diffusers_component_folder(path, "vae", VAE_WHAT, "ae.safetensors")
        state, metadata = read_folder_state_dict(folder, VAE_WHAT), None
    else:
        state, metadata = read_file_state_dict(path, VAE_WHAT)
    try:
        vae = comfy.sd.VAE(sd=state, metadata=metadata)
        vae.throw_exception_if_invalid()
    except RuntimeError as err:
        raise ZImageInputError(VAE_WHAT, f"'{os.path.basename(path.rstrip(os.sep))}', which ComfyUI does not recognise as a VAE ({err})",
                               "the FLUX.1 VAE (ae.safetensors) or a diffusers folder's vae/", "pick the FLUX.1 VAE") from err
    return vae
