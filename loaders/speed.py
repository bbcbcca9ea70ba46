"""Speed options for the transformer: the attention backend (diffusers' attention dispatcher) and
``torch.compile`` of the repeated blocks (diffusers' ``compile_repeated_blocks``)."""

from __future__ import annotations

import logging

import torch

from .errors import ZImageInputError

log = logging.getLogger("zimage")

# Our names -> diffusers' backends. Only the variable-length kernels: Z-Image's attention carries a
# padding mask (captions of different lengths), which the plain flash / sage kernels do not take.
# No "*_hub" backends: those download kernels at run time.
ATTENTION_BACKENDS = {"sdpa": "native", "flash_varlen": "flash_varlen", "sage_varlen": "sage_varlen"}
_INSTALL = {"flash_varlen": "pip install flash-attn (a CUDA build matching your torch)", "sage_varlen": "pip install sageattention"}


def set_attention(module: torch.nn.Module, name: str) -> None:
    if name not in ATTENTION_BACKENDS:
        raise ZImageInputError("attention", repr(name), f"one of {list(ATTENTION_BACKENDS)}", "pick one from the list")
    try:
        module.set_attention_backend(ATTENTION_BACKENDS[name])
    except (RuntimeError, ImportError, ValueError) as exc:
        raise ZImageInputError("attention", f"'{name}', which is not usable here ({exc})", "an installed attention backend",
                               f"{_INSTALL.get(name, 'install it')}, or choose sdpa (PyTorch's own, always there)") from None


def compile_blocks(module: torch.nn.Module) -> None:
    """Each transformer block compiled once and reused for all 30 (diffusers' regional compilation):
    the first run pays the compilation, a new image size recompiles."""
    module.compile_repeated_blocks(dynamic=True)
    log.info("Z-Image: transformer blocks compiled with torch.compile (first run is slow)")


def use_fast_matmul(module: torch.nn.Module, on: bool) -> None:
    """comfy-kitchen's quantised matmuls for the quantised layers (CUDA only; elsewhere, and for
    layouts or cards without a kernel, the layer dequantises as before)."""
    from .quantized import quantized_layers

    for layer in quantized_layers(module).values():
        layer.fast_matmul = on
