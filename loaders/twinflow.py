"""TwinFlow-Z-Image-Turbo: the stock transformer plus ``t_embedder_2``, a second timestep embedder
fed the target timestep (inclusionAI, arXiv 2512.05150).

With ``t = 1 − σ`` (diffusers' timestep) and ``t_tgt`` the target, the adaLN input is
``t_embedder(1000·t) + t_embedder_2(1000·(t_tgt − t)) · |t − t_tgt|``, the sum computed in float64 and
cast to the activations' dtype. Built on diffusers' own module: ``t_embedder_2`` is diffusers'
``TimestepEmbedder`` registered on the transformer (so the file's tensor names, LoRAs and quantised
layers work as for any other layer) and the second term is added by a forward hook on diffusers'
``t_embedder``, active only while the TwinFlow sampler sets a target.
"""

from __future__ import annotations

import os

import torch
from diffusers.models.transformers.transformer_z_image import TimestepEmbedder

from .errors import ZImageInputError
from .gguf_files import is_gguf, read_gguf
from .module_state import attached
from .quantized import QuantizedWeight, comfy_weight, layer_formats, scale_keys
from .safetensors_io import diffusers_component_folder, open_safetensors, require_file
from .weight_files import IGNORED_KEYS

KEY = "t_embedder_2."
WHAT = "TwinFlow transformer file"
_PARTS = {"mlp.0.weight": 2, "mlp.0.bias": 1, "mlp.2.weight": 2, "mlp.2.bias": 1}


def normalise_name(name: str) -> str | None:
    """``…extended_weights.t_embedder_2.mlp.0.weight`` (any prefix) -> ``t_embedder_2.mlp.0.weight``."""
    if KEY in name:
        return KEY + name.split(KEY, 1)[1]
    return None


def check_embedder(shapes: dict[str, tuple], source: str) -> tuple[int, int] | None:
    """(out size, mid size) of the file's ``t_embedder_2``; None when the file has none; a clear
    error when it is partial or broken."""
    found = {n[len(KEY):]: tuple(s) for n, s in shapes.items() if n.startswith(KEY)}
    if not found:
        return None
    missing = sorted(set(_PARTS) - set(found))
    extra = sorted(set(found) - set(_PARTS))
    how = "the TwinFlow file is incomplete or damaged: download it again"
    if missing or extra:
        raise ZImageInputError("TwinFlow transformer file", f"'{source}' with a partial t_embedder_2 (missing {missing}, unknown {extra})",
                               f"t_embedder_2 with {sorted(_PARTS)}", how)
    mid, freq = found["mlp.0.weight"]
    out, mid2 = found["mlp.2.weight"]
    if mid2 != mid or found["mlp.0.bias"] != (mid,) or found["mlp.2.bias"] != (out,):
        raise ZImageInputError("TwinFlow transformer file", f"'{source}' with t_embedder_2 shapes {found}", "mlp.0 [mid, 256] and mlp.2 [out, mid] with their biases", how)
    if freq != 256:
        raise ZImageInputError("TwinFlow transformer file", f"'{source}' with a t_embedder_2 taking {freq} frequencies", "256, as t_embedder", how)
    return out, mid


def read_embedder(path: str) -> dict[str, torch.Tensor] | None:
    """``t_embedder_2``'s tensors under its own names (``t_embedder_2.mlp.0.weight`` …) from a
    transformer file in any layout the pack reads (single file under any prefix, diffusers folder,
    Comfy-Org quantised or legacy scaled fp8, GGUF), read alone; quantised layers come back
    dequantised to float32. None when the file has none; a partial one is refused."""
    require_file(path, WHAT)
    source = os.path.basename(path.rstrip(os.sep))
    if os.path.isdir(path):
        tensors = _folder_embedder(diffusers_component_folder(path, "transformer", WHAT, "TwinFlow-Z-Image-Turbo.safetensors"))
    elif is_gguf(path):
        _, found = read_gguf(path, WHAT)
        tensors = {k: (v.dequantize(torch.float32) if isinstance(v, QuantizedWeight) else v) for k, v in found.items() if KEY in k}
    else:
        tensors = _safetensors_embedder(path, source)
    tensors = {normalise_name(k): v for k, v in tensors.items()}
    if check_embedder({k: tuple(v.shape) for k, v in tensors.items()}, source) is None:
        return None
    return tensors


def _folder_embedder(folder: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        with open_safetensors(os.path.join(folder, name), WHAT) as handle:
            tensors.update({k: handle.get_tensor(k) for k in list(handle.keys()) if KEY in k})
    return tensors


def _safetensors_embedder(path: str, source: str) -> dict[str, torch.Tensor]:
    """Only t_embedder_2's tensors (and the file's fp8 marker) are read, not the 12 GB around them."""
    with open_safetensors(path, WHAT) as handle:
        keys = [k for k in list(handle.keys()) if KEY in k or k == "scaled_fp8" or k.endswith(".scaled_fp8")]
        present = set(keys)

        def read(key):
            return handle.get_tensor(key) if key in present else None

        tensors, used = {}, set()
        for layer, conf in layer_formats(keys, read, handle.metadata() or {}, source).items():
            if KEY in layer and f"{layer}.weight" in present:
                tensors[f"{layer}.weight"] = comfy_weight(layer, conf, read, source).dequantize(torch.float32)
                used.update((f"{layer}.weight",) + scale_keys(layer))
        tensors.update({k: handle.get_tensor(k) for k in keys
                        if KEY in k and k not in used and not k.endswith(".comfy_quant") and not IGNORED_KEYS.search(k)})
    return tensors


def attach_embedder(module: torch.nn.Module, out_size: int, mid_size: int) -> None:
    """Register an (empty, to be loaded) ``t_embedder_2`` and the hook that adds its term."""
    module.t_embedder_2 = TimestepEmbedder(out_size, mid_size=mid_size)
    module.t_embedder.register_forward_hook(_add_target_term)
    module.t_embedder.__dict__["_zimage_twin_owner"] = _Owner(module)


class _Owner:
    """The transformer, seen from its t_embedder's hook (a plain attribute: not a submodule)."""

    def __init__(self, module):
        self.module = module


class _Target:
    def __init__(self):
        self.t_target: float | None = None  # None: plain Z-Image (t_embedder alone)


def target_state(module: torch.nn.Module) -> _Target:
    return attached(module, "_zimage_twin_target", _Target)


def is_twinflow(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "t_embedder_2", None), torch.nn.Module)


class target_timestep:
    """While active, the transformer's adaLN input carries the TwinFlow term for ``t_target``."""

    def __init__(self, module: torch.nn.Module, t_target: float):
        if not is_twinflow(module):
            raise ZImageInputError("model", "a Z-Image transformer without t_embedder_2", "a TwinFlow-Z-Image-Turbo transformer",
                                   "load TwinFlow-Z-Image-Turbo, or use the Turbo sampler for this model")
        self.state, self.t_target = target_state(module), t_target

    def __enter__(self):
        self.state.t_target = self.t_target
        return self

    def __exit__(self, *exc):
        self.state.t_target = None
        return False


def _add_target_term(embedder, args, output):
    module = embedder.__dict__["_zimage_twin_owner"].module
    t_target = target_state(module).t_target
    if t_target is None:
        return output
    t_scaled = args[0]
    t = t_scaled.double() / module.config.t_scale
    gap = t_target - t
    second = module.t_embedder_2(gap * module.config.t_scale)
    total = output.double() + second.double() * gap.abs()[:, None]
    return total.to(output.dtype)
