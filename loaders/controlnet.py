"""Z-Image-Turbo-Fun-Controlnet-Union (alibaba-pai) files: every version, detected from the keys.

| version  | control layers | control in-dim | refiner                                        |
| 1.0      | 6              | 16             | plain blocks, no hints                         |
| 2.0      | 15             | 33             | control_noise_refiner all zero: the control layers give the refiner hints |
| 2.1      | 15             | 33             | 2 control blocks whose hints go into the noise refiner (also 8-step, 2601, 2602, Tile) |
| 2.1 lite | 3              | 33             | as 2.1 (also Tile lite)                        |

The network is diffusers' ``ZImageControlNetModel`` (its config chosen from the detected version; the
2.0 conversion is diffusers' single-file converter). How its hints enter the transformer follows the
reference (samplers/control.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from diffusers import ZImageControlNetModel
from diffusers.loaders.single_file_utils import convert_z_image_controlnet_checkpoint_to_diffusers

from .dtypes import FP8_DTYPES, compute_dtype_for, parse_weight_dtype
from .errors import ZImageInputError
from .model_files import describe_foreign_keys, strip_prefix
from .safetensors_io import open_safetensors, require_file

WHAT = "Z-Image Fun ControlNet file (model_patches)"
MAIN_LAYERS = 30
DEFAULT_STRENGTH = {"1.0": 0.75, "2.0": 0.9, "2.1": 0.9, "2.1 lite": 0.9}


@dataclass
class ZImageControlNet:
    module: ZImageControlNetModel
    version: str
    control_in_dim: int
    storage_dtype: torch.dtype
    compute_dtype: torch.dtype
    source: str
    offload: bool = False  # stream the control blocks from host memory (diffusers group offloading)

    @property
    def default_strength(self) -> float:
        return DEFAULT_STRENGTH[self.version]

    @property
    def inpaint_channels(self) -> bool:
        return self.control_in_dim == 33


def _count(keys, prefix: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


# The published layouts (VideoX-Fun's config/z_image/*.yaml): control layer count → the main layers
# each hint follows. Refiner hints (2.x) go after noise-refiner blocks 0 and 1.
CONTROL_PLACES = {6: [0, 5, 10, 15, 20, 25], 15: list(range(0, 30, 2)), 3: [0, 10, 20]}
REFINER_PLACES = [0, 1]


def _all_zero(state: dict, prefix: str, suffix: str) -> bool | None:
    found = [v for k, v in state.items() if k.startswith(prefix) and k.endswith(suffix)]
    # count_nonzero has no fp8 kernel on the CPU: fp8 files are compared in bf16 (exact)
    return all(torch.count_nonzero(t.to(torch.bfloat16) if t.dtype in FP8_DTYPES else t) == 0 for t in found) if found else None


def detect_version(state: dict) -> tuple[str, dict]:
    """(version, ZImageControlNetModel config) from the keys and shapes; refuses other files.

    2.0 shipped its control_noise_refiner untrained (zeros) and its reference never runs it (the control
    layers give the refiner hints); re-saves may drop those keys. So a 15-layer file is 2.0 when the
    refiner is absent or zero by either reference's test (diffusers: before_proj, ComfyUI: after_proj),
    2.1 (8-step, 2601, 2602, Tile) when it is trained."""
    keys = list(state)
    if "control_all_x_embedder.2-1.weight" not in state:
        looks_like, use_instead = describe_foreign_keys(keys)
        raise ZImageInputError(WHAT, f"a file that looks like {looks_like}", "a Z-Image-Turbo-Fun-Controlnet-Union file (keys control_all_x_embedder.*, control_layers.*)", f"use {use_instead}")
    dim, patch_in = state["control_all_x_embedder.2-1.weight"].shape
    in_dim = patch_in // 4
    n_control = _count(keys, "control_layers.")
    head_dim = state["control_layers.0.attention.norm_q.weight"].shape[0]
    if "control_noise_refiner.0.after_proj.weight" in state:
        untrained = _all_zero(state, "control_noise_refiner.", "before_proj.weight") or _all_zero(state, "control_noise_refiner.", "after_proj.weight")
        refiner = "control_layers" if untrained else "control_noise_refiner"
    elif n_control == 15 and not any(k.startswith("control_noise_refiner.") for k in keys):
        refiner = "control_layers"  # 2.0 without its unused refiner
    else:
        refiner = None  # 1.0: plain refiner blocks, no hints
    version = {(6, 16, None): "1.0", (15, 33, "control_layers"): "2.0", (15, 33, "control_noise_refiner"): "2.1",
               (3, 33, "control_noise_refiner"): "2.1 lite"}.get((n_control, in_dim, refiner))
    if version is None:
        raise ZImageInputError(
            WHAT, f"a Fun ControlNet layout this pack does not know ({n_control} control layers, {in_dim} input channels, refiner {refiner})",
            "Union 1.0, 2.0, 2.1 (8-step, 2601, 2602, Tile) or 2.1 lite", "use one of those files, or report the file so its layout can be added",
        )
    config = dict(
        control_layers_places=CONTROL_PLACES[n_control], control_refiner_layers_places=REFINER_PLACES if refiner else None,
        control_in_dim=in_dim, add_control_noise_refiner=refiner, dim=dim, n_refiner_layers=2,
        n_heads=dim // head_dim, n_kv_heads=dim // head_dim,
    )
    return version, config


def read_controlnet_state(path: str) -> dict:
    """The file's tensors under the published names (a ``model.`` / ``controlnet.`` / ``diffusion_model.`` prefix removed)."""
    require_file(path, WHAT)
    with open_safetensors(path, WHAT) as handle:
        keys = list(handle.keys())
        prefix = strip_prefix(keys, ("model.", "controlnet.", "diffusion_model."))
        return {k[len(prefix):]: handle.get_tensor(k) for k in keys}


def load_controlnet(path: str, weight_dtype: str | torch.dtype = "default", offload: bool = False) -> ZImageControlNet:
    return controlnet_from_state(read_controlnet_state(path), weight_dtype, path, offload)


def controlnet_from_state(state: dict, weight_dtype: str | torch.dtype = "default", source: str = "", offload: bool = False) -> ZImageControlNet:
    """diffusers' ZImageControlNetModel on the published tensors (the dict is not changed; tensors already
    in the storage dtype are used as they are, not copied)."""
    requested = parse_weight_dtype(weight_dtype)
    state = dict(state)
    version, config = detect_version(state)
    state = convert_z_image_controlnet_checkpoint_to_diffusers(state, config)
    storage = requested or next(v.dtype for k, v in state.items() if k.endswith("to_q.weight"))
    compute = compute_dtype_for(storage)
    # fp8: the file's tensors as they are; store_narrow rounds each Linear to fp8 once (not through bf16 first)
    state = {k: (v if storage in FP8_DTYPES else v.to(compute)) for k, v in state.items()}
    with torch.device("meta"):
        module = ZImageControlNetModel(**config)
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ZImageInputError(WHAT, f"'{os.path.basename(source)}' ({version} layout) with {len(missing)} missing tensors (e.g. {missing[:2]}) and {len(unexpected)} unknown ones (e.g. {unexpected[:2]})",
                               f"a complete Union {version} file", "download the file again")
    module.load_state_dict(state, strict=True, assign=True)
    module = module.eval().requires_grad_(False)
    if storage in FP8_DTYPES:
        from .compute_dtype import store_narrow

        store_narrow(module, storage, compute)
    return ZImageControlNet(module, version, config["control_in_dim"], storage, compute, source, offload)


def enable_offload(cnet: ZImageControlNet, device: torch.device) -> None:
    """For the engine (without ComfyUI): diffusers' group offloading at leaf level, each control layer brought to
    ``device`` when it runs (prefetched on a side stream on CUDA). Leaf level, because the pack calls the control
    blocks one by one and never the ControlNet's own forward, where block-level offloading would load the rest."""
    if getattr(cnet.module, "_zimage_group_offload", None) == device:
        return
    cnet.module.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="leaf_level",
                                     use_stream=device.type == "cuda")
    cnet.module._zimage_group_offload = device
