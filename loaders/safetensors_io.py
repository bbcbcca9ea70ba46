"""Opening safetensors files with memory mapping and clear errors.

safetensors maps the file and hands out tensors that share the mapped pages, so a loader that
assigns those tensors into a module (``load_state_dict(assign=True)``) holds no second copy.
"""

from __future__ import annotations

import os

import torch
from contextlib import contextmanager
from typing import Iterator

from safetensors import safe_open

from .errors import ZImageInputError


def require_file(path: str, what: str) -> str:
    if not path:
        raise ZImageInputError(what, "an empty path", "the path of a model file", "choose a file in the node")
    if not os.path.exists(path):
        raise ZImageInputError(
            what, f"no file at '{path}'", "an existing file",
            "check the spelling, or put the file into the matching ComfyUI models folder and refresh",
        )
    return path


@contextmanager
def open_safetensors(path: str, what: str) -> Iterator["safe_open"]:
    """Open ``path`` lazily (memory-mapped); a truncated or corrupt file gets a clear error."""
    require_file(path, what)
    if os.path.isdir(path):
        raise ZImageInputError(what, f"a folder '{path}'", "a .safetensors file", "pick the file inside the folder, or use the folder loader")
    try:
        handle = safe_open(path, framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own error type for every header problem
        size = os.path.getsize(path)
        raise ZImageInputError(
            what, f"'{os.path.basename(path)}' ({size} bytes) is not a complete safetensors file ({exc})",
            "a whole .safetensors file",
            "the download was probably cut off or the file is corrupt: download it again",
        ) from None
    with handle:
        yield handle


def read_metadata(path: str) -> dict:
    """The ``__metadata__`` dict of a safetensors header (empty when absent)."""
    with open_safetensors(path, "file") as handle:
        return dict(handle.metadata() or {})


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def stored_dtype(folder: str) -> torch.dtype:
    """The dtype of the first floating tensor of a diffusers folder's weights (float32 if none)."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if files:
        with open_safetensors(os.path.join(folder, files[0]), "weights") as handle:
            for key in handle.keys():
                dtype = _DTYPES.get(handle.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    return torch.float32


def diffusers_component_folder(path: str, component: str, what: str, single_file: str) -> str:
    """``path/component`` of a diffusers pipeline folder (or ``path`` itself if it is that component)."""
    folder = os.path.join(path, component) if os.path.isdir(os.path.join(path, component)) else path
    if not os.path.exists(os.path.join(folder, "config.json")):
        raise ZImageInputError(
            what, f"a folder '{path}' with no config.json", f"a diffusers folder with {component}/config.json, or {single_file}",
            "point the loader at the Z-Image diffusers folder or at the single file",
        )
    return folder
