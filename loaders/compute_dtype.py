"""Which dtype each model computes in, separate from the dtype its weights are stored in, and the
protection that keeps fp16 compute finite.

- bf16 where the device has it (NVIDIA Ampere and newer, recent AMD, Apple M-series with macOS 14,
  CPUs), else fp16 for the transformer with overflow protection (T4, RTX 20xx, V100), else fp32
  (Pascal and older: their fp16 is slow); a file stored in fp32 computes in fp32.
- The text encoder and the VAE never compute in fp16 by choice: Qwen3's residual stream carries
  activations above fp16's 65504 and the FLUX VAE's mid-block overflows, which clamping cannot
  repair, so on cards without bf16 they compute in fp32 from their stored weights (diffusers'
  layerwise casting: one layer at a time is upcast, the weights stay in their file dtype).
- fp16 transformer protection, as native ComfyUI protects Z-Image: the attention output, the
  feed-forward's gated hidden state and output, the adaLN modulation and each block's output are
  clamped to the fp16 range (``nan_to_num``), by forward hooks on diffusers' own modules.
"""

from __future__ import annotations

import torch

from .errors import ZImageInputError

COMPUTE_DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FP16_MAX = 65504.0


def parse_compute_dtype(name) -> torch.dtype | None:
    if isinstance(name, torch.dtype) or name is None:
        return name
    if name not in COMPUTE_DTYPES:
        raise ZImageInputError("compute_dtype", repr(name), f"one of {list(COMPUTE_DTYPES)}", "pick one from the list")
    return COMPUTE_DTYPES[name]


def device_has_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device)
            return True
        except (RuntimeError, TypeError):
            return False
    return True  # the CPU


def device_has_fast_fp16(device: torch.device) -> bool:
    """Pascal (6.x) and older run fp16 at a fraction of fp32's speed."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 7
    return device.type == "mps"


def choose(storage: torch.dtype, requested, device: torch.device, role: str = "transformer") -> torch.dtype:
    """The compute dtype for a model whose weights are stored in ``storage`` (the dequantised dtype
    for quantised files), on ``device``. ``role``: "transformer", "text_encoder" or "vae"."""
    requested = parse_compute_dtype(requested)
    if requested is not None:
        if requested == torch.bfloat16 and not device_has_bf16(device):
            raise ZImageInputError("compute_dtype", f"bf16 on {device}, which has no bf16", "a dtype the device computes in",
                                   "choose auto, fp16 or fp32")
        return requested
    if storage == torch.float32:
        return torch.float32
    if device_has_bf16(device):
        return torch.bfloat16
    if role == "transformer" and device_has_fast_fp16(device):
        return torch.float16
    return torch.float32


def set_compute_dtype(module: torch.nn.Module, storage: torch.dtype, new: torch.dtype) -> torch.dtype:
    """Make ``module`` (weights stored in ``storage``) compute in ``new``; returns the storage dtype
    it ends with. Quantised layers just expand to ``new``; fp8, and 16-bit weights under fp32 compute,
    keep their storage and are upcast one layer at a time (diffusers' layerwise casting); a 16-bit
    file under the other 16-bit dtype is cast once (the same bytes); fp32 weights under a narrower
    compute dtype are cast (half the memory)."""
    from .quantized import QuantizedLinear, quantized_layers

    _remove_layerwise_casting(module)
    if quantized_layers(module):
        for sub in module.modules():
            if isinstance(sub, QuantizedLinear):
                sub.compute_dtype = new
        _cast_plain(module, new)
        return storage
    if storage in (torch.float8_e4m3fn, torch.float8_e5m2) or (new == torch.float32 and storage in (torch.bfloat16, torch.float16)):
        store_narrow(module, storage, new)
        return storage
    _cast_plain(module, new)
    return new


def plain_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of the module's plain (not quantised-storage) floating weights."""
    from .quantized import QuantizedLinear

    for sub in module.modules():
        if isinstance(sub, QuantizedLinear):
            continue
        for param in sub.parameters(recurse=False):
            if param.dtype.is_floating_point and param.element_size() > 1:
                return param.dtype
    return torch.bfloat16


def _cast_plain(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Every floating parameter and buffer that is not a quantised layer's stored tensor."""
    from .quantized import QuantizedLinear

    for sub in module.modules():
        stored = isinstance(sub, QuantizedLinear)
        for name, param in list(sub.named_parameters(recurse=False)):
            if param.dtype.is_floating_point and param.element_size() > 1 and not (stored and name != "bias"):
                param.data = param.data.to(dtype)
        for name, buf in list(sub.named_buffers(recurse=False)):
            if buf.dtype.is_floating_point and buf.element_size() > 1 and not stored:
                sub._buffers[name] = buf.to(dtype)


def store_narrow(module: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> None:
    """diffusers' layerwise casting: Linear / conv weights stay in ``storage`` and are upcast per
    layer for the matmul; the precision-critical layers it skips (norms, embedders) hold ``compute``."""
    from diffusers.hooks import apply_layerwise_casting

    skip = getattr(module, "_skip_layerwise_casting_patterns", None) or ()
    apply_layerwise_casting(module, storage_dtype=storage, compute_dtype=compute,
                            skip_modules_pattern=tuple(skip) + ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$"))
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if registry is not None and registry.get_hook("layerwise_casting") is not None:
            for name, param in list(sub.named_parameters(recurse=False)):
                if param.dtype != storage and param.dtype.is_floating_point:
                    param.data = param.data.to(storage)
            continue
        for name, param in list(sub.named_parameters(recurse=False)):
            if param.dtype.is_floating_point and param.dtype != compute:
                param.data = param.data.to(compute)


def _remove_layerwise_casting(module: torch.nn.Module) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None and not any(getattr(m, "_diffusers_hook", None) is not None for m in module.modules()):
        return
    from diffusers.hooks import HookRegistry

    for sub in module.modules():  # diffusers' hook refuses removal (NotImplementedError); its weights are in their
        registry = getattr(sub, "_diffusers_hook", None)  # storage dtype between calls, which is what set_compute_dtype keeps
        hook = registry.get_hook("layerwise_casting") if registry is not None else None
        if hook is not None:
            hook.deinitalize_hook = lambda m: m
    HookRegistry.check_if_exists_or_initialize(module).remove_hook("layerwise_casting", recurse=True)


def describe(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------ fp16 protection


def _clamp(tensor):
    if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float16:
        if torch.is_grad_enabled() and tensor.requires_grad:
            return torch.nan_to_num(tensor, nan=0.0, posinf=FP16_MAX, neginf=-FP16_MAX)
        return tensor.nan_to_num_(nan=0.0, posinf=FP16_MAX, neginf=-FP16_MAX)  # in place: no new activation memory
    return tensor


def _clamp_output(module, args, output):
    return _clamp(output)


def _clamp_input(module, args):
    return tuple(_clamp(a) for a in args)


_BLOCKS = ("ZImageTransformerBlock", "ZImageControlTransformerBlock")


def protect_fp16(module: torch.nn.Module) -> int:
    """Clamp hooks on every Z-Image block of ``module`` (a no-op for tensors that are not fp16).
    Returns the number of blocks protected; installing twice does nothing."""
    blocks = [b for b in module.modules() if type(b).__name__ in _BLOCKS]
    if module.__dict__.get("_zimage_fp16_guards"):
        return len(blocks)
    handles = []
    for block in blocks:
        handles.append(block.attention.register_forward_hook(_clamp_output))
        handles.append(block.feed_forward.w2.register_forward_pre_hook(_clamp_input))  # silu(w1 x) · w3 x
        handles.append(block.feed_forward.register_forward_hook(_clamp_output))
        if getattr(block, "adaLN_modulation", None) is not None:
            handles.append(block.adaLN_modulation.register_forward_hook(_clamp_output))
        handles.append(block.register_forward_hook(_clamp_output))  # the residual stream
    module.__dict__["_zimage_fp16_guards"] = handles
    return len(blocks)


def unprotect_fp16(module: torch.nn.Module) -> None:
    for handle in module.__dict__.pop("_zimage_fp16_guards", []):
        handle.remove()


def check_finite(tensor: torch.Tensor, step: int, total: int, dtype: torch.dtype, what: str = "transformer") -> None:
    """A NaN or inf in a step's output is an error, never a black picture."""
    if not torch.isfinite(tensor).all():
        if dtype == torch.float16:
            how = "set the loader's compute_dtype to fp32"
        else:  # fp32 cannot be the cause when it already computes in fp32
            how = "check the model file (it may be corrupt)" + (" or use compute_dtype fp32" if dtype != torch.float32 else ": download it again")
        raise ZImageInputError(
            f"{what} output", f"NaN or inf values{f' at step {step + 1} of {total}' if total > 1 else ''}, computing in {describe(dtype)}",
            "finite values", how,
        )


def match_controlnet(cnet, dtype: torch.dtype) -> None:
    """A ControlNet computes in its transformer's dtype (its hints are added to that stream)."""
    if cnet.compute_dtype == dtype:
        return
    cnet.storage_dtype = set_compute_dtype(cnet.module, cnet.storage_dtype, dtype)
    cnet.compute_dtype = dtype
    if dtype == torch.float16:
        protect_fp16(cnet.module)
    else:
        unprotect_fp16(cnet.module)
