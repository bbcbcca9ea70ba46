"""Loading the Z-Image S3-DiT transformer from the files users have.

Formats: ComfyUI single file (fused ``attention.qkv``, optional ``model.diffusion_model.`` or
``diffusion_model.`` prefix), diffusers-keyed single file, diffusers folder (sharded with an
index); bf16 / fp16 / fp32, and fp8 (e4m3fn, with or without per-tensor scales).

The network is diffusers' ``ZImageTransformer2DModel``; the ComfyUI-to-diffusers key conversion
is diffusers' own single-file converter. The config is read from tensor shapes, so the same path
loads the real 6 B model and the tiny test models. The module is built on the meta device and
the memory-mapped tensors are assigned into it, so loading holds no second copy of the weights.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace

import torch
from diffusers import ZImageTransformer2DModel
from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

from .dtypes import FP8_DTYPES, compute_dtype_for, parse_weight_dtype
from .errors import ZImageInputError
from .model_files import describe_foreign_keys, strip_prefix
from .safetensors_io import diffusers_component_folder, open_safetensors, require_file, stored_dtype

log = logging.getLogger("zimage")

WHAT = "Z-Image transformer file"
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
_FP8_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
# Markers and activation scales some fp8 exporters add; they carry no weights.
_IGNORED_KEYS = re.compile(r"(^scaled_fp8$|\.scale_input$|\.input_scale$|\.comfy_quant$)")
_SIGNATURE = ("cap_embedder.1.weight", "t_embedder.mlp.0.weight")


@dataclass
class ZImageTransformer:
    """A loaded transformer and how its weights are held."""

    module: ZImageTransformer2DModel
    storage_dtype: torch.dtype
    compute_dtype: torch.dtype
    source: str
    lora_stack: tuple = ()  # LoraPatch objects, merged when sampling starts (loaders/lora_merge.py)
    param_set: object = None  # a ParamSet replacing some tensors (loaders/param_sets.py); None = the file's
    controls: tuple = ()  # ControlSpec objects (samplers/control.py)

    def with_control(self, spec) -> "ZImageTransformer":
        return replace(self, controls=self.controls + (spec,))

    def with_lora(self, patch) -> "ZImageTransformer":
        """A new model object with one more LoRA; this one is unchanged (ComfyUI caches it)."""
        return replace(self, lora_stack=self.lora_stack + (patch,))

    @property
    def device(self) -> torch.device:
        return self.module.x_pad_token.device

    @property
    def cap_feat_dim(self) -> int:
        return self.module.config.cap_feat_dim

    @property
    def in_channels(self) -> int:
        return self.module.config.in_channels


def load_transformer(path: str, weight_dtype: str | torch.dtype = "default") -> ZImageTransformer:
    """Load a Z-Image transformer from a single file or a diffusers folder (on the CPU)."""
    requested = parse_weight_dtype(weight_dtype)
    require_file(path, WHAT)
    if os.path.isdir(path):
        return _load_folder(path, requested)
    return _load_single_file(path, requested)


def _load_folder(path: str, requested: torch.dtype | None) -> ZImageTransformer:
    folder = diffusers_component_folder(path, "transformer", WHAT, "z_image_turbo_bf16.safetensors")
    storage = requested or stored_dtype(folder)
    load_dtype = compute_dtype_for(storage)
    module = ZImageTransformer2DModel.from_pretrained(folder, torch_dtype=load_dtype, local_files_only=True)
    return finish_module(module, storage, path)


def _load_single_file(path: str, requested: torch.dtype | None) -> ZImageTransformer:
    state, file_dtype = read_transformer_state_dict(path)
    storage = requested or file_dtype
    compute = compute_dtype_for(storage)
    if storage in FP8_DTYPES:
        # keep fp8 tensors as they are; layerwise casting below stores the rest in fp8 too
        state = {k: (v if v.dtype in FP8_DTYPES else v.to(compute)) for k, v in state.items()}
    else:
        state = {k: v.to(storage) for k, v in state.items()}
    config = config_from_state_dict(state, path)
    with torch.device("meta"):
        module = ZImageTransformer2DModel(**config)
    check_keys(module, state, path)
    module.load_state_dict(state, strict=True, assign=True)
    del state
    return finish_module(module.eval().requires_grad_(False), storage, path)


def store_in_fp8(module: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> None:
    """diffusers' layerwise casting: Linear weights stay fp8 and are upcast per layer for the matmul;
    the precision-critical layers it skips (norms, embedders) must hold the compute dtype."""
    module.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
    for sub in module.modules():
        hooked = getattr(sub, "_diffusers_hook", None) is not None and sub._diffusers_hook.get_hook("layerwise_casting") is not None
        if hooked:
            continue
        for name, param in list(sub.named_parameters(recurse=False)):
            if param.dtype in FP8_DTYPES:
                setattr(sub, name, torch.nn.Parameter(param.to(compute), requires_grad=False))


def finish_module(module: ZImageTransformer2DModel, storage: torch.dtype, source: str) -> ZImageTransformer:
    compute = compute_dtype_for(storage)
    if storage in FP8_DTYPES:
        store_in_fp8(module, storage, compute)
    return ZImageTransformer(module=module.eval().requires_grad_(False), storage_dtype=storage, compute_dtype=compute, source=source)


def read_transformer_state_dict(path: str) -> tuple[dict[str, torch.Tensor], torch.dtype]:
    """Diffusers-named, memory-mapped tensors of a single file, and the file's main weight dtype."""
    with open_safetensors(path, WHAT) as handle:
        keys = [k for k in handle.keys() if not _IGNORED_KEYS.search(k)]
        prefix = strip_prefix(keys, _PREFIXES)
        names = {k[len(prefix):]: k for k in keys}
        if not all(sig in names for sig in _SIGNATURE) or not any(n.startswith("layers.") for n in names):
            looks_like, use_instead = describe_foreign_keys(keys)
            raise ZImageInputError(
                WHAT, f"'{os.path.basename(path)}' looks like {looks_like}",
                "a Z-Image transformer (keys cap_embedder.*, t_embedder.*, layers.N.*)", f"use {use_instead}",
            )
        scales = {n[: -len(s)] + ".weight": handle.get_tensor(names[n]) for n in names for s in _FP8_SCALE_SUFFIXES if n.endswith(s)}
        tensors = {n: handle.get_tensor(k) for n, k in names.items() if not n.endswith(_FP8_SCALE_SUFFIXES)}
    file_dtype = tensors["layers.0.feed_forward.w1.weight"].dtype if "layers.0.feed_forward.w1.weight" in tensors else tensors["cap_embedder.1.weight"].dtype
    if scales:
        # Scaled fp8 cannot be kept as plain fp8 (the scale is what keeps values in range),
        # so those weights are dequantised to bf16.
        for name, scale in scales.items():
            tensors[name] = (tensors[name].to(torch.float32) * scale.to(torch.float32)).to(torch.bfloat16)
        log.info("%s: %d fp8 weights with per-tensor scales dequantised to bf16", os.path.basename(path), len(scales))
        file_dtype = torch.bfloat16
    if any(n.endswith(".attention.qkv.weight") for n in tensors) or "x_embedder.weight" in tensors:
        tensors = convert_z_image_transformer_checkpoint_to_diffusers(tensors)
    return tensors, file_dtype


def _layer_count(names, prefix: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(re.escape(prefix) + r"(\d+)\.", n))}
    return max(found) + 1 if found else 0


def rope_axes_for(head_dim: int) -> list[int]:
    """Z-Image splits each head 32/48/48 (of 128) between the frame, height and width axes."""
    first = head_dim // 4
    rest = head_dim - first
    axes = [first, rest // 2, rest - rest // 2]
    if any(a % 2 for a in axes):
        raise ZImageInputError(WHAT, f"an attention head size of {head_dim}", "a head size that splits into even rope axes (128 for Z-Image)", "use a Z-Image file")
    return axes


def config_from_state_dict(state: dict[str, torch.Tensor], source: str = "") -> dict:
    """ZImageTransformer2DModel arguments read from tensor shapes."""
    try:
        return _config_from_shapes(state)
    except KeyError as exc:
        raise ZImageInputError(
            WHAT, f"'{os.path.basename(source)}' without the tensor {exc}", "a complete Z-Image transformer",
            "the file is incomplete: download it again",
        ) from None


def _config_from_shapes(state: dict[str, torch.Tensor]) -> dict:
    dim, cap_feat_dim = state["cap_embedder.1.weight"].shape
    head_dim = state["layers.0.attention.norm_q.weight"].shape[0]
    patch_in = state["all_x_embedder.2-1.weight"].shape[1]
    config = dict(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=patch_in // 4,
        dim=dim,
        n_layers=_layer_count(state, "layers."),
        n_refiner_layers=_layer_count(state, "noise_refiner."),
        n_heads=dim // head_dim,
        n_kv_heads=state["layers.0.attention.to_k.weight"].shape[0] // head_dim,
        cap_feat_dim=cap_feat_dim,
        axes_dims=rope_axes_for(head_dim),
    )
    if "siglip_embedder.1.weight" in state:
        config["siglip_feat_dim"] = state["siglip_embedder.1.weight"].shape[1]
    return config


def check_keys(module: torch.nn.Module, state: dict, path: str) -> None:
    expected = set(module.state_dict().keys())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ZImageInputError(
            WHAT, f"'{os.path.basename(path)}' with {len(missing)} missing tensors (e.g. {missing[:3]}) and {len(unexpected)} unknown ones (e.g. {unexpected[:3]})",
            "a complete Z-Image transformer", "the file is incomplete or from a different Z-Image variant: download the official file again",
        )
