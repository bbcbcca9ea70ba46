"""Loading the Z-Image S3-DiT transformer from the files users have.

Formats: ComfyUI single file (fused ``attention.qkv``, optional ``model.diffusion_model.`` or
``diffusion_model.`` prefix), diffusers-keyed single file, diffusers folder (sharded with an
index); bf16 / fp16 / fp32; plain fp8 (diffusers' layerwise casting); quantised files held quantised
(Comfy-Org mixed precision and GGUF: loaders/quantized.py, loaders/weight_files.py).

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

from .compute_dtype import choose, protect_fp16, set_compute_dtype, store_narrow, unprotect_fp16
from .dtypes import FP8_DTYPES, compute_dtype_for, parse_weight_dtype
from .errors import ZImageInputError
from .model_files import describe_foreign_keys, strip_prefix
from .quantized import install, quantized_layers
from .residency import onload_device, pick_device
from . import twinflow
from .safetensors_io import diffusers_component_folder, open_safetensors, require_file, stored_dtype
from .weight_files import read_weights

log = logging.getLogger("zimage")

WHAT = "Z-Image transformer file"
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
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
    quantization: str = ""  # e.g. "int8_tensorwise + ConvRot ×210" for a quantised file; "" when plain
    memory_mode: str = "auto"  # loaders/residency.py MEMORY_MODES

    def describe(self) -> str:
        held = self.quantization or str(self.storage_dtype).replace("torch.", "")
        kind = "TwinFlow-Z-Image transformer" if twinflow.is_twinflow(self.module) else "Z-Image transformer"
        guard = " (fp16 overflow protection on)" if self.compute_dtype == torch.float16 else ""
        return f"{kind} {os.path.basename(self.source)}: weights {held}, compute {str(self.compute_dtype).replace('torch.', '')}{guard}, memory {self.memory_mode}"

    def with_control(self, spec) -> "ZImageTransformer":
        return replace(self, controls=self.controls + (spec,))

    def with_lora(self, patch) -> "ZImageTransformer":
        """A new model object with one more LoRA; this one is unchanged (ComfyUI caches it)."""
        return replace(self, lora_stack=self.lora_stack + (patch,))

    @property
    def device(self) -> torch.device:
        """Where it computes: under block / leaf offloading the weights wait on the CPU between calls,
        and the inputs go to the offloading's onload device."""
        return onload_device(self.module) or self.module.x_pad_token.device

    @property
    def cap_feat_dim(self) -> int:
        return self.module.config.cap_feat_dim

    @property
    def in_channels(self) -> int:
        return self.module.config.in_channels


def load_transformer(path: str, weight_dtype: str | torch.dtype = "default", compute_dtype: str | torch.dtype = "auto",
                     device: torch.device | None = None) -> ZImageTransformer:
    """Load a Z-Image transformer from a single file or a diffusers folder (on the CPU), computing
    in ``compute_dtype`` ("auto": bf16 where ``device`` has it, else fp16 with overflow protection,
    else fp32; loaders/compute_dtype.py)."""
    requested = parse_weight_dtype(weight_dtype)
    require_file(path, WHAT)
    loaded = _load_folder(path, requested) if os.path.isdir(path) else _load_single_file(path, requested)
    return with_compute_dtype(loaded, choose(loaded.compute_dtype, compute_dtype, device or pick_device()))


def with_compute_dtype(loaded: ZImageTransformer, dtype: torch.dtype) -> ZImageTransformer:
    """``loaded`` computing in ``dtype`` (fp16 with its overflow protection)."""
    if dtype != loaded.compute_dtype:
        storage = set_compute_dtype(loaded.module, loaded.storage_dtype, dtype)
        loaded = replace(loaded, storage_dtype=storage, compute_dtype=dtype)
    if dtype == torch.float16:
        protect_fp16(loaded.module)
    else:
        unprotect_fp16(loaded.module)
    return loaded


def _load_folder(path: str, requested: torch.dtype | None) -> ZImageTransformer:
    folder = diffusers_component_folder(path, "transformer", WHAT, "z_image_turbo_bf16.safetensors")
    storage = requested or stored_dtype(folder)
    load_dtype = compute_dtype_for(storage)
    module = ZImageTransformer2DModel.from_pretrained(folder, torch_dtype=load_dtype, local_files_only=True)
    _load_folder_twin_embedder(module, folder, load_dtype)
    return finish_module(module, storage, path)


def _load_folder_twin_embedder(module: ZImageTransformer2DModel, folder: str, dtype: torch.dtype) -> None:
    """diffusers' from_pretrained drops tensors its class does not know: read t_embedder_2 ourselves."""
    tensors = {}
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        with open_safetensors(os.path.join(folder, name), WHAT) as handle:
            tensors.update({twinflow.normalise_name(k): handle.get_tensor(k) for k in handle.keys() if twinflow.KEY in k})
    twin = twinflow.check_embedder({k: tuple(v.shape) for k, v in tensors.items()}, os.path.basename(folder))
    if twin is None:
        return
    twinflow.attach_embedder(module, *twin)
    module.t_embedder_2.load_state_dict({k[len(twinflow.KEY):]: v.to(dtype) for k, v in tensors.items()})
    module.t_embedder_2.requires_grad_(False)


def _meta_module(config: dict, shapes: dict, path: str) -> ZImageTransformer2DModel:
    """diffusers' module on the meta device, with TwinFlow's t_embedder_2 when the file has one."""
    twin = twinflow.check_embedder({k: tuple(v.shape) for k, v in shapes.items()}, os.path.basename(path))
    with torch.device("meta"):
        module = ZImageTransformer2DModel(**config)
        if twin is not None:
            twinflow.attach_embedder(module, *twin)
    return module


def _load_single_file(path: str, requested: torch.dtype | None) -> ZImageTransformer:
    weights, file_dtype = read_transformer_state_dict(path)
    if weights.quantized:
        return _load_quantized(path, weights, requested)
    state = weights.plain
    storage = requested or file_dtype
    # fp8: the file's tensors as they are (memory-mapped); layerwise casting below rounds each Linear to
    # fp8 once — going through bf16 first would put 2.6 % of an fp32 file's values one fp8 step off
    if storage not in FP8_DTYPES:
        state = {k: v.to(storage) for k, v in state.items()}
    config = config_from_state_dict(state, path)
    module = _meta_module(config, state, path)
    check_keys(module, state, path)
    module.load_state_dict(state, strict=True, assign=True)
    del state
    return finish_module(module.eval().requires_grad_(False), storage, path)


def _load_quantized(path: str, weights, requested: torch.dtype | None) -> ZImageTransformer:
    """A quantised file (Comfy-Org mixed precision or GGUF): the quantised layers keep their stored
    bytes and compute in bf16; ``weight_dtype`` other than default expands them to that dtype."""
    compute = compute_dtype_for(requested) if requested is not None else torch.bfloat16
    if requested is not None:
        log.info("%s: expanding %d quantised layers to %s as asked (weight_dtype)", os.path.basename(path), len(weights.quantized), requested)
        state = {**weights.plain, **{f"{k}.weight": w.dequantize(compute) for k, w in weights.quantized.items()}}
        weights = type(weights)({k: v.to(requested) for k, v in state.items()}, {}, weights.container, weights.arch)
        return _finish_from_weights(path, weights, requested)
    return _finish_from_weights(path, weights, compute)


def _finish_from_weights(path: str, weights, compute: torch.dtype) -> ZImageTransformer:
    plain = {k: v.to(compute) for k, v in weights.plain.items()}
    shapes = {**plain, **{f"{k}.weight": torch.empty(w.shape, device="meta") for k, w in weights.quantized.items()}}
    config = config_from_state_dict(shapes, path)
    module = _meta_module(config, shapes, path)
    check_keys(module, shapes, path)
    install(module, weights.quantized, plain, compute, os.path.basename(path))
    missing, unexpected = module.load_state_dict(plain, strict=False, assign=True)
    stored = {f"{layer}.{name}" for layer, sub in quantized_layers(module).items() for name, _ in sub.named_parameters(recurse=False)}
    if unexpected or set(missing) - stored:
        raise ZImageInputError(WHAT, f"'{os.path.basename(path)}' whose tensors do not fit the model ({sorted(set(missing) - stored)[:3]}, {unexpected[:3]})",
                               "a complete Z-Image transformer", "download the file again")
    loaded = ZImageTransformer(module=module.eval().requires_grad_(False), storage_dtype=compute, compute_dtype=compute, source=path,
                               quantization=weights.describe() + (f" ({weights.container})" if weights.quantized else ""))
    if loaded.quantization:
        log.info("Z-Image transformer %s: quantised layers %s", os.path.basename(path), loaded.quantization)
    return loaded


def finish_module(module: ZImageTransformer2DModel, storage: torch.dtype, source: str) -> ZImageTransformer:
    compute = compute_dtype_for(storage)
    if storage in FP8_DTYPES:
        store_narrow(module, storage, compute)
    return ZImageTransformer(module=module.eval().requires_grad_(False), storage_dtype=storage, compute_dtype=compute, source=source)


def read_transformer_state_dict(path: str):
    """Diffusers-named, memory-mapped tensors of a single file (quantised layers kept as stored),
    and the file's main plain weight dtype."""
    weights = read_weights(path, WHAT)
    names = weights.names()
    prefix = strip_prefix([n for n in names if twinflow.KEY not in n], _PREFIXES)
    short = {n[len(prefix):] for n in names}
    if not all(sig in short for sig in _SIGNATURE) or not any(n.startswith("layers.") for n in short):
        looks_like, use_instead = describe_foreign_keys(names)
        raise ZImageInputError(
            WHAT, f"'{os.path.basename(path)}' looks like {looks_like}",
            "a Z-Image transformer (keys cap_embedder.*, t_embedder.*, layers.N.*)", f"use {use_instead}",
        )
    weights = weights.renamed(lambda n: twinflow.normalise_name(n) or (n[len(prefix):] if n.startswith(prefix) else None))
    for pad in ("x_pad_token", "cap_pad_token"):  # stable-diffusion.cpp GGUF exports store them 1-D
        if pad in weights.plain and weights.plain[pad].ndim == 1:
            weights.plain[pad] = weights.plain[pad].unsqueeze(0)
    main = weights.plain.get("layers.0.feed_forward.w1.weight", weights.plain.get("cap_embedder.1.weight"))
    file_dtype = main.dtype if main is not None and main.dtype.is_floating_point else torch.bfloat16
    if any(n.endswith(".attention.qkv.weight") for n in weights.names()) or "x_embedder.weight" in weights.names():
        weights.plain = convert_z_image_transformer_checkpoint_to_diffusers(weights.plain)
        weights.quantized = _convert_quantized_names(weights.quantized)
    return weights, file_dtype


def _convert_quantized_names(quantized: dict) -> dict:
    """ComfyUI -> diffusers names for quantised layers, through diffusers' own converter run on a
    meta tensor of each layer's shape: its output names say where the layer goes, and a fused qkv
    comes back as three row ranges, which are split exactly in the stored format."""
    out = {}
    for layer, weight in quantized.items():
        converted = convert_z_image_transformer_checkpoint_to_diffusers({f"{layer}.weight": torch.empty(weight.shape, device="meta")})
        start = 0
        for name, part in converted.items():
            rows = part.shape[0]
            out[name[: -len(".weight")]] = weight if rows == weight.shape[0] else weight.rows(slice(start, start + rows))
            start += rows
    return out


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
