"""GGUF files as ComfyUI's own models, held quantised: a Z-Image transformer (ComfyUI-GGUF's layout: architecture
``lumina2``, ComfyUI tensor names) becomes ComfyUI's NextDiT and a Qwen3-4B text encoder (llama.cpp's layout) becomes
ComfyUI's Qwen3-4B CLIP, both built by ``comfy.sd`` with the pack's custom operations.

How the weights are held (the approach of city96/ComfyUI-GGUF, built on ComfyUI v0.33's own quantised-tensor type
instead of a tensor subclass of our own):

- every quantised 2-D weight is a comfy-kitchen ``QuantizedTensor`` (the type ComfyUI's fp8 / int8 / nvfp4 weights
  are) with a GGUF layout registered here: its storage is the file's blocks (uint8, memory-mapped), its logical shape
  and dtype those of the weight. ComfyUI's memory manager sizes, pins, streams and places them by their stored bytes
  (``module_size``, ``memory_management.vram_aligned_size`` / ``interpret_gathered_like``, the dynamic-VRAM vbar);
- norms, biases and other F32 / F16 tensors are kept as the file stores them; 1-D pad tokens become ``[1, dim]``;
- the operations (``GGUFOps``, ComfyUI's ``manual_cast`` ops) go through ComfyUI's own ``cast_bias_weight`` and
  dequantise the weight per layer at compute time (diffusers' GGUF block functions in float32, ``dequantize_blocks``);
- LoRA and other weight patches (``add_patches``: native LoraLoader, the pack's add_lora) apply to the dequantised
  weight at compute time, never merged into the blocks and never skipped: ComfyUI hands them to the op as a
  ``LowVramPatch`` (lowvram modules: ``weight_function``; dynamic VRAM: ``weight_lowvram_function``, which the op runs
  on every call instead of letting ComfyUI re-quantise the patched weight into the cache: GGUF has no quantiser in
  torch); for fully loaded modules the patcher's ``patch_weight_to_device`` would merge into the stored weight, so the
  MODEL's patcher gets a small mixin (``GGUFPatches``) that hands those keys to the op instead. It keeps the patcher's
  own class otherwise: dynamic stays dynamic.

Verified on CPU (tests/in_comfyui/test_native_gguf.py, ComfyUI --cpu, so the plain ModelPatcher):
- the blocks held as the file's bytes (ComfyUI's ``model_size`` = the file's size), dequantising bit for bit as gguf;
- loading through ``comfy.sd`` (transformer and the Qwen3-4B CLIP), 1-D pad tokens, refusals;
- model calls, a ``sample_turbo`` run and a CLIP encode bit-equal to ComfyUI's own loaders on the dequantised weights,
  and within Q8_0's error of UNETLoader on the original bf16 file;
- LoRA (native ``load_lora_for_models`` and the pack's ``add_lora``) bit-equal to the same LoRA on the dequantised
  model: full load (``GGUFPatches`` hands the patch to the op), ComfyUI's lowvram load (LowVramPatch in
  ``weight_function``, forced on CPU), and a full load then ``partially_unload`` (the patch applies once);
- ComfyUI's gathered casting of a GGUF layer into one byte buffer and back (``vram_aligned_size``,
  ``cast_to_gathered``, ``interpret_gathered_like``: what the vbar and pinned buffers do), module ``.to()``, and saving
  (``model_state_dict_for_saving``: dequantised weights, patches merged).
Needs a CUDA GPU (bench/gpu_native_gguf.py checks it, not run yet: no GPU here): ModelPatcherDynamic (ComfyUI
re-routes it to the plain patcher on CPU), i.e. the vbar path of ``cast_bias_weight`` (``cast_modules_with_vbar`` /
``resolve_cast_module_with_vbar``) with the ``weight_lowvram_function`` swap, comfy-aimdo's allocations, pinned host
buffers (``comfy.pinned_memory``) and offload streams; on non-dynamic GPUs, the async offload-stream cast buffers.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.quant_ops
import comfy.sd
import comfy.supported_models
import comfy.utils
import torch

from ..loaders.errors import ZImageInputError
from ..loaders.gguf_files import llama_cpp_to_transformers, read_gguf
from ..loaders.quantized import QuantizedWeight
from .native_models import check_text_encoder_width, text_encoder_config

TRANSFORMER_WHAT = "Z-Image transformer (GGUF)"
TEXT_ENCODER_WHAT = "Qwen3-4B text encoder (GGUF)"
LAYOUT = "ZImageGGUF"
_LOGICAL_DTYPE = torch.bfloat16  # what the quantised weights stand for: ComfyUI picks the model's dtypes from it


def _kitchen():
    try:
        from comfy_kitchen.tensor import BaseLayoutParams, QuantizedLayout
    except ImportError:
        raise ZImageInputError("GGUF file", "a ComfyUI without comfy-kitchen (its quantised-tensor package)", "ComfyUI v0.33 or newer with "
                               "its requirements installed", "install ComfyUI's requirements.txt (comfy-kitchen)") from None
    return BaseLayoutParams, QuantizedLayout


def _make_layout():
    BaseLayoutParams, QuantizedLayout = _kitchen()

    @dataclasses.dataclass(frozen=True)
    class GGUFParams(BaseLayoutParams):
        quant_type: int = 0

        def _tensor_fields(self) -> list[str]:
            return []  # the block scales are inside the blocks

    class GGUFLayout(QuantizedLayout):
        """GGUF blocks as they are in the file: ``qdata`` uint8 ``[rows, bytes per row]``."""

        Params = GGUFParams

        @classmethod
        def quantize(cls, tensor, **kwargs):
            # only reached if ComfyUI tried to cache a patched weight re-quantised; the ops apply patches per call instead
            raise NotImplementedError("GGUF weights are not re-quantised in ComfyUI; patches apply at compute time")

        @classmethod
        def dequantize(cls, qdata, params):
            return dequantize_blocks(qdata, int(params.quant_type), tuple(params.orig_shape)).to(params.orig_dtype)

        @classmethod
        def get_plain_tensors(cls, qtensor):
            return (qtensor._qdata,)

        @classmethod
        def state_dict_tensors(cls, qdata, params):
            return {"": qdata}

    comfy.quant_ops.register_layout_class(LAYOUT, GGUFLayout)
    return GGUFParams


_PARAMS = None
_Q8_0 = 8  # gguf.GGMLQuantizationType.Q8_0


def dequantize_blocks(qdata: torch.Tensor, quant_type: int, shape) -> torch.Tensor:
    """GGUF blocks → float32 weights, on the blocks' device (diffusers' torch block functions, as the pack's engine
    uses, with the f16 block scales widened to float32 first: every code × scale is then exact; gguf's own numpy
    dequantiser gives the same values)."""
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, dequantize_functions

    block_size, type_size = GGML_QUANT_SIZES[quant_type]
    blocks = qdata.view(torch.uint8).reshape(-1, type_size)
    if quant_type == _Q8_0:  # the common case, in two passes (diffusers' promotes int8 inside the product: 3× slower on CPU)
        scale = blocks[:, :2].contiguous().view(torch.float16).to(torch.float32)
        return blocks[:, 2:].view(torch.int8).to(torch.float32).mul_(scale).reshape(shape)
    return dequantize_functions[quant_type](blocks, block_size, type_size, dtype=torch.float32).to(torch.float32).reshape(shape)


def gguf_tensor(weight: QuantizedWeight, dtype: torch.dtype = _LOGICAL_DTYPE):
    """A GGUF weight as ComfyUI's ``QuantizedTensor`` (no copy of the blocks)."""
    global _PARAMS
    if _PARAMS is None:
        _PARAMS = _make_layout()
    params = _PARAMS(scale=None, orig_dtype=dtype, orig_shape=tuple(weight.shape), quant_type=int(weight.options["quant_type"]))
    return comfy.quant_ops.QuantizedTensor(weight.tensors["weight"], LAYOUT, params)


def is_gguf(tensor) -> bool:
    return isinstance(tensor, comfy.quant_ops.QuantizedTensor) and getattr(tensor, "_layout_cls", None) == LAYOUT


def stored_bytes(model) -> int:
    """Bytes of the MODEL's (or CLIP patcher's) parameters as held (quantised weights by their blocks)."""
    return sum(p.nbytes for p in model.model.parameters())


# ------------------------------------------------------------------------------------------------- operations

_PATCH_ATTR = "zimage_gguf_patches"  # {param name: LowVramPatch} handed over by GGUFPatches for fully loaded modules


def _functions(module, name: str) -> tuple[list, object]:
    """(the functions to run on the dequantised ``name``, the lowvram function taken away for this call): the
    LoRA first (as ComfyUI orders them), then weight wrappers; a patch ComfyUI already placed is not applied twice."""
    functions = list(getattr(module, name + "_function", []))
    lowvram = getattr(module, name + "_lowvram_function", None)
    handed = getattr(module, _PATCH_ATTR, {}).get(name)
    if lowvram is not None and is_gguf(getattr(module, name, None)):
        lowvram.clear_prepared()  # patches staged by a prefetch into a cast buffer are not read: ComfyUI's originals are
        functions.insert(0, lowvram)
    else:
        lowvram = None
    placed = {f.key for f in functions if isinstance(f, comfy.model_patcher.LowVramPatch)}
    if handed is not None and handed.key not in placed:
        functions.insert(0, handed)
    return functions, lowvram


class _compute_time_patches:
    """For one op call: the patches of GGUF weights in ``weight_function`` (run on the dequantised weight by
    ``cast_bias_weight``), not in ``weight_lowvram_function`` (which the vbar path would re-quantise)."""

    def __init__(self, module):
        self.module, self.saved = module, []

    def __enter__(self):
        for name in ("weight", "bias"):
            functions, lowvram = _functions(self.module, name)
            if functions or lowvram is not None:
                self.saved.append((name, self.module.__dict__.get(name + "_function"), lowvram))
                setattr(self.module, name + "_function", functions)
                if lowvram is not None:
                    setattr(self.module, name + "_lowvram_function", None)

    def __exit__(self, *_):
        for name, functions, lowvram in self.saved:
            if functions is None:
                self.module.__dict__.pop(name + "_function", None)
            else:
                setattr(self.module, name + "_function", functions)
            if lowvram is not None:
                setattr(self.module, name + "_lowvram_function", lowvram)


def _plain(tensor):
    return tensor.dequantize() if isinstance(tensor, comfy.quant_ops.QuantizedTensor) else tensor


class _HeldAsStored:
    """Loads ``weight`` / ``bias`` as the state dict holds them (GGUF QuantizedTensor, or F32 / F16 as stored),
    checking each shape, and always computes through ComfyUI's ``cast_bias_weight``."""

    comfy_cast_weights = True

    def _expected_shape(self, name: str):
        current = getattr(self, name, None)
        return None if current is None else tuple(current.shape)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for name in ("weight", "bias"):
            key = prefix + name
            if key not in state_dict:
                if name == "weight" and getattr(self, "_lazy_weight", False) and self.weight is None:
                    missing_keys.append(key)
                continue
            value = state_dict[key]
            expected = self._expected_shape(name)
            if expected is None and name == "bias" and not getattr(self, "_has_bias", False):
                unexpected_keys.append(key)
                continue
            if expected is not None and tuple(value.shape) != expected:
                error_msgs.append(f"size mismatch for {key}: {tuple(value.shape)} in the file, {expected} in the model")
                continue
            setattr(self, name, torch.nn.Parameter(value, requires_grad=False))

    def _apply(self, fn, recurse=True):
        # ComfyUI's own re-wrapping for QuantizedTensor parameters (``.to()`` / ``.cuda()`` on a module)
        return comfy.ops._quantized_apply(self, fn, recurse)

    def forward(self, *args, **kwargs):
        comfy.ops.run_every_op()
        with _compute_time_patches(self):
            return self.forward_comfy_cast_weights(*args, **kwargs)


class GGUFOps(comfy.ops.manual_cast):
    """ComfyUI operations for GGUF state dicts (``model_options["custom_operations"]``)."""

    class Linear(_HeldAsStored, comfy.ops.manual_cast.Linear):
        _lazy_weight = True

        def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
            torch.nn.Module.__init__(self)  # no storage: the file's tensors are assigned as they are
            self.in_features, self.out_features, self._has_bias = in_features, out_features, bias
            self.weight, self.bias = None, None
            self.weight_comfy_model_dtype = self.bias_comfy_model_dtype = None

        def _expected_shape(self, name):
            return (self.out_features, self.in_features) if name == "weight" else ((self.out_features,) if self._has_bias else None)

        def forward_comfy_cast_weights(self, input):
            with comfy.ops.CastBiasWeightContext(self, input, offloadable=True) as (weight, bias):
                return torch.nn.functional.linear(input, _plain(weight), bias)

    class Embedding(_HeldAsStored, comfy.ops.manual_cast.Embedding):
        _lazy_weight = True

        def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                     scale_grad_by_freq=False, sparse=False, _weight=None, _freeze=False, device=None, dtype=None):
            torch.nn.Module.__init__(self)
            self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
            self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse = max_norm, norm_type, scale_grad_by_freq, sparse
            self.weight, self.bias = None, None
            self.weight_comfy_model_dtype = None

        def _expected_shape(self, name):
            return (self.num_embeddings, self.embedding_dim) if name == "weight" else None

        def forward_comfy_cast_weights(self, input, out_dtype=None):
            if is_gguf(self.weight) and not self.weight_function:
                # only the looked-up rows are expanded (GGUF blocks run along rows): not the whole 151936-row table
                rows = self.weight._qdata[input.reshape(-1).to(self.weight.device)]
                out = dequantize_blocks(rows, int(self.weight.params.quant_type), (rows.shape[0], self.embedding_dim))
                return out.to(device=input.device, dtype=out_dtype or self.weight.dtype).reshape(*input.shape, self.embedding_dim)
            dtype = None if self.weight.dtype in (torch.float16, torch.bfloat16) else out_dtype
            with comfy.ops.CastBiasWeightContext(self, device=input.device, dtype=dtype, offloadable=True) as (weight, _):
                out = torch.nn.functional.embedding(input, _plain(weight), self.padding_idx, self.max_norm, self.norm_type,
                                                    self.scale_grad_by_freq, self.sparse)
            return out.to(dtype=out_dtype)

    class RMSNorm(_HeldAsStored, comfy.ops.manual_cast.RMSNorm):
        pass

    class LayerNorm(_HeldAsStored, comfy.ops.manual_cast.LayerNorm):
        pass


# ------------------------------------------------------------------------------------------------- the patcher

class GGUFPatches:
    """Mixed into the MODEL's own patcher class (dynamic or not): weight patches on GGUF weights go to the op, which
    applies them to the dequantised weight at compute time, instead of being merged into the stored blocks."""

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False, force_cast=False):
        weight, _, _ = comfy.model_patcher.get_key_weight(self.model, key)
        if not is_gguf(weight):
            return super().patch_weight_to_device(key, device_to, inplace_update, return_weight, force_cast)
        module_name, name = key.rsplit(".", 1)
        module = comfy.utils.get_attr(self.model, module_name)
        if return_weight:  # someone wants the patched weight itself (saving, LoRA extraction)
            plain = weight.to(device=device_to, dtype=torch.float32).dequantize()
            return (comfy.lora.calculate_weight(self.patches[key], plain, key) if key in self.patches else plain).to(weight.dtype)
        if force_cast and device_to is not None and weight.device != torch.device(device_to):
            if key not in self.backup:
                self.backup[key] = collections.namedtuple("Dimension", ["weight", "inplace_update"])(weight, False)
            comfy.utils.set_attr_param(self.model, key, weight.to(device_to))
        handed = dict(getattr(module, _PATCH_ATTR, {}))
        if key in self.patches:
            handed[name] = comfy.model_patcher.LowVramPatch(key, self.patches)
        else:
            handed.pop(name, None)
        setattr(module, _PATCH_ATTR, handed)
        return None

    def model_state_dict_for_saving(self, model=None, prefix=""):
        """Saving (ModelSave, CheckpointSave) writes the GGUF weights dequantised, patches applied, in their logical dtype:
        ComfyUI's lazy per-weight casting, reading ``patch_weight_to_device(return_weight=True)`` below."""
        out = super().model_state_dict_for_saving(model, prefix)
        for key in list(out):
            try:
                weight = comfy.utils.get_attr(self.model, prefix + key)
            except AttributeError:
                continue
            if is_gguf(weight):
                template = torch.empty(tuple(weight.shape), dtype=weight.dtype, device="meta")
                out[key] = comfy.model_patcher.LazyCastingParam(self, prefix + key, template)
        return out

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            for module in self.model.modules():
                module.__dict__.pop(_PATCH_ATTR, None)
        return super().unpatch_model(device_to=device_to, unpatch_weights=unpatch_weights)


_PATCHER_CLASSES: dict[type, type] = {}


def hold_patches_at_compute_time(patcher):
    """Gives ``patcher`` (in place) the GGUFPatches mixin on top of its own class; clones keep it."""
    base = type(patcher)
    if issubclass(base, GGUFPatches):
        return patcher
    if base not in _PATCHER_CLASSES:
        _PATCHER_CLASSES[base] = type("ZImageGGUF" + base.__name__, (GGUFPatches, base), {})
    patcher.__class__ = _PATCHER_CLASSES[base]
    return patcher


# ------------------------------------------------------------------------------------------------- loaders

def read_gguf_state_dict(path: str, what: str, arches: tuple[str, ...]) -> dict:
    """The file's tensors: GGUF QuantizedTensors for quantised 2-D weights, plain tensors as stored for the rest;
    refuses a file that is not a readable GGUF of the given architectures."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ZImageInputError(what, f"'{name}', which cannot be read ({exc.strerror})", "a .gguf file", "pick the file again") from None
    if magic != b"GGUF":
        raise ZImageInputError(what, f"'{name}', which is not a GGUF file (it starts with {magic!r})", "a .gguf file",
                               "pick a .gguf file, or load a .safetensors file with ComfyUI's own loader")
    arch, tensors = read_gguf(path, what)
    if arch not in arches:
        raise ZImageInputError(what, f"'{name}', a GGUF of architecture '{arch or 'none'}'", f"architecture {arches[0]}",
                               "pick the Z-Image file of this kind (Z-Image transformers are 'lumina2', Qwen3 text encoders 'qwen3')")
    return {key: gguf_tensor(value) if isinstance(value, QuantizedWeight) else value for key, value in tensors.items()}


def _check_all_loaded(root: torch.nn.Module, path: str, what: str) -> None:
    missing = [n for n, m in root.named_modules() if getattr(m, "_lazy_weight", False) and m.weight is None]
    if missing:
        raise ZImageInputError(what, f"'{os.path.basename(path)}' without the weights of {len(missing)} layers ({', '.join(missing[:3])}…)",
                               "a complete model", "the file is incomplete or for another model: download it again")


def load_gguf_transformer(path: str):
    """ComfyUI's Z-Image MODEL from a GGUF transformer (ComfyUI-GGUF / stable-diffusion.cpp layout, ``lumina2``),
    its quantised weights held quantised and dequantised per layer at compute time."""
    return _load_transformer(path)


def _load_transformer(path: str, disable_dynamic: bool = False):
    state = read_gguf_state_dict(path, TRANSFORMER_WHAT, ("lumina2", ""))  # "": stable-diffusion.cpp files name none
    for key in [k for k in state if k.endswith("pad_token") and state[k].ndim == 1]:
        state[key] = state[key].reshape(1, -1)  # some exports store [dim] for ComfyUI's [1, dim]
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"custom_operations": GGUFOps}, disable_dynamic=disable_dynamic)
    if model is None or not isinstance(model.model.model_config, comfy.supported_models.ZImage):
        raise ZImageInputError(TRANSFORMER_WHAT, f"'{os.path.basename(path)}', a GGUF that ComfyUI does not recognise as a Z-Image transformer",
                               "a Z-Image-Turbo or Z-Image-Base GGUF (dim 3840)", "pick the Z-Image GGUF (Lumina-Image-2.0 files are another model)")
    _check_all_loaded(model.model.diffusion_model, path, TRANSFORMER_WHAT)
    # what ComfyUI rebuilds a non-dynamic copy from when conditioning hooks need one (comfy/samplers.py)
    model.cached_patcher_init = (_load_transformer, (path,))
    return hold_patches_at_compute_time(model)


def read_gguf_text_encoder_state_dict(path: str) -> dict:
    """A llama.cpp Qwen3 GGUF in the names of ComfyUI's ``qwen_3_4b.safetensors`` (``model.layers.N…``, no LM head)."""
    state = read_gguf_state_dict(path, TEXT_ENCODER_WHAT, ("qwen3",))
    out = {}
    for key, value in state.items():
        name = llama_cpp_to_transformers(key)
        if name is not None:
            out["model." + name] = value
    if "model.embed_tokens.weight" not in out or not any(k.startswith("model.layers.") for k in out):
        raise ZImageInputError(TEXT_ENCODER_WHAT, f"'{os.path.basename(path)}' without Qwen3's embedding or layers", "a Qwen3-4B GGUF",
                               "download the text encoder again")
    return out


def load_gguf_text_encoder(path: str, embedding_directory=None):
    """ComfyUI's Z-Image CLIP (Qwen3-4B, type lumina2) from a llama.cpp Qwen3 GGUF, held quantised like the transformer."""
    return _load_text_encoder(path, embedding_directory)


def _load_text_encoder(path: str, embedding_directory=None, disable_dynamic: bool = False):
    state = read_gguf_text_encoder_state_dict(path)
    check_text_encoder_width(state, os.path.basename(path))
    options = {"custom_operations": GGUFOps, "qwen3_4b_model_config": text_encoder_config(state),
               "initial_device": comfy.model_management.text_encoder_offload_device()}
    clip = comfy.sd.load_text_encoder_state_dicts([state], embedding_directory=embedding_directory, clip_type=comfy.sd.CLIPType.LUMINA2,
                                                  model_options=options, disable_dynamic=disable_dynamic)
    _check_all_loaded(clip.cond_stage_model, path, TEXT_ENCODER_WHAT)
    clip.patcher.cached_patcher_init = (_text_encoder_patcher, (path, embedding_directory))
    hold_patches_at_compute_time(clip.patcher)
    return clip


def _text_encoder_patcher(path: str, embedding_directory=None, disable_dynamic: bool = False):
    return _load_text_encoder(path, embedding_directory, disable_dynamic).patcher
