"""How a quantised weight is stored and computed, whatever the file format.

One place answers "how is a weight stored and computed": a quantised Linear keeps the file's bytes
on the device (device bytes ≈ file bytes) and turns them into a compute-dtype weight only for its
own matmul. Two families of formats:

- Comfy-Org mixed precision (ComfyUI's QUANTIZATION.md): ``float8_e4m3fn``, ``float8_e5m2``,
  ``int8_tensorwise`` (with or without ConvRot), ``nvfp4``, ``mxfp8``. Dequantisation and the fast
  CUDA matmuls are comfy-kitchen's (the kernels ComfyUI itself uses): the stored tensors are wrapped
  in its ``QuantizedTensor`` at call time.
- GGUF (Q8_0 … Q2_K, K-quants): dequantised by diffusers' GGUF code (torch ops, so on the device).

The stored tensors are plain tensors registered as parameters, so every memory mover (``.to``,
diffusers' group offloading, pinning, FakeTensorMode) handles them as it handles any weight.
LoRAs on a quantised layer are added at compute time (``y += s·(x·Aᵀ)·Bᵀ``): the stored bytes are
never rewritten, so nothing is re-quantised and removing a LoRA is exact.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import ZImageInputError

log = logging.getLogger("zimage")

# comfy_quant "format" -> comfy-kitchen layout class and the stored weight dtype
COMFY_FORMATS = {
    "float8_e4m3fn": ("TensorCoreFP8Layout", torch.float8_e4m3fn),
    "float8_e5m2": ("TensorCoreFP8Layout", torch.float8_e5m2),
    "int8_tensorwise": ("TensorWiseINT8Layout", torch.int8),
    "nvfp4": ("TensorCoreNVFP4Layout", torch.uint8),
    "mxfp8": ("TensorCoreMXFP8Layout", torch.float8_e4m3fn),
}
# Formats ComfyUI knows that this pack does not compute yet: refused by name, never cast.
KNOWN_UNSUPPORTED = ("convrot_w4a4", "asym_w4a8_int8", "svdquant_w4a4", "awq_w4a16")
GGUF_PREFIX = "gguf_"


def _kitchen():
    try:
        import comfy_kitchen
        from comfy_kitchen.tensor import QuantizedTensor
    except ImportError:
        raise ZImageInputError(
            "quantised model file", "a Comfy-Org quantised file, but comfy-kitchen is not installed",
            "the comfy-kitchen package (ComfyUI ships it)", "pip install comfy-kitchen (inside ComfyUI it is already there: update ComfyUI)",
        ) from None
    return comfy_kitchen, QuantizedTensor


@dataclass
class QuantizedWeight:
    """One quantised weight as the file stores it: ``tensors`` by the file's suffix
    (``weight``, ``weight_scale``, ``weight_scale_2``), the logical ``[out, in]`` shape and options."""

    format: str
    tensors: dict[str, torch.Tensor]
    shape: tuple[int, int]
    options: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def is_gguf(self) -> bool:
        return self.format.startswith(GGUF_PREFIX)

    def describe(self) -> str:
        extra = " + ConvRot" if self.options.get("convrot") else ""
        return f"{self.format}{extra}"

    @property
    def row_independent(self) -> bool:
        """GGUF blocks and the fp8 / int8 scales run along rows (ConvRot rotates within a row)."""
        return self.is_gguf or self.format in ("float8_e4m3fn", "float8_e5m2", "int8_tensorwise")

    def rows(self, index) -> "QuantizedWeight":
        """The rows ``index`` (a slice: a fused qkv split into q, k and v; or a tensor of row ids),
        bit-exact for every format."""
        tensors = dict(self.tensors)
        if self.row_independent:
            tensors["weight"] = self.tensors["weight"][index]
            scale = self.tensors.get("weight_scale")
            if scale is not None and scale.ndim > 0 and scale.shape[0] > 1:
                tensors["weight_scale"] = scale[index]
        elif self.format in ("nvfp4", "mxfp8") and isinstance(index, slice):
            tensors.update(_block_scaled_rows(self, index.start, index.stop))
        else:
            raise ZImageInputError("quantised model file", f"rows of a {self.format} layer", "a format whose rows can be split", "use another file")
        return QuantizedWeight(self.format, tensors, (tensors["weight"].shape[0], self.shape[1]), dict(self.options))

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        if self.is_gguf:
            return _gguf_dequantize(self.tensors["weight"], self.options["quant_type"], self.shape).to(dtype)
        return self.kitchen_tensor(dtype).dequantize().to(dtype)

    def kitchen_tensor(self, dtype: torch.dtype):
        """The stored tensors wrapped as comfy-kitchen's ``QuantizedTensor`` (no copy)."""
        _, QuantizedTensor = _kitchen()
        from comfy_kitchen.tensor import get_layout_class

        layout, _ = COMFY_FORMATS[self.format]
        params_cls = get_layout_class(layout).Params
        t = self.tensors
        if self.format == "nvfp4":
            params = params_cls(scale=t["weight_scale_2"], block_scale=t["weight_scale"], orig_dtype=dtype, orig_shape=self.shape)
        elif self.format == "int8_tensorwise":
            params = params_cls(scale=t["weight_scale"], orig_dtype=dtype, orig_shape=self.shape,
                                convrot=bool(self.options.get("convrot", False)), convrot_groupsize=int(self.options.get("convrot_groupsize", 256)))
        else:
            params = params_cls(scale=t["weight_scale"], orig_dtype=dtype, orig_shape=self.shape)
        return QuantizedTensor(t["weight"], layout, params)


def _block_scaled_rows(weight: QuantizedWeight, start: int, stop: int) -> dict:
    """nvfp4 / mxfp8 keep their block scales in cuBLAS's swizzled tile layout: unswizzle, slice the
    rows, swizzle again (comfy-kitchen's own helpers), so the split is bit-exact."""
    from comfy_kitchen.float_utils import from_blocked, to_blocked

    qdata, scale = weight.tensors["weight"], weight.tensors["weight_scale"]
    block = 16 if weight.format == "nvfp4" else 32
    rows, cols = weight.shape
    n_blocks = -(-cols // block)
    plain = from_blocked(scale.view(torch.uint8), rows, n_blocks)
    part = to_blocked(plain[start:stop].contiguous(), flatten=False)
    return {"weight": qdata[start:stop], "weight_scale": part.view(scale.dtype)}


def _gguf_dequantize(data: torch.Tensor, quant_type: int, shape) -> torch.Tensor:
    """diffusers' GGUF dequantisation (torch ops: runs on whatever device the bytes are on)."""
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, dequantize_functions

    # the block functions directly, on plain tensors (diffusers' GGUFParameter wrapper adds a
    # __torch_function__ layer per op, and cannot wrap the fake tensors of the memory benchmark)
    block_size, type_size = GGML_QUANT_SIZES[quant_type]
    blocks = data.view(torch.uint8).reshape(-1, type_size)
    return dequantize_functions[quant_type](blocks, block_size, type_size).reshape(shape)


# ---------------------------------------------------------------- reading a file's quantisation


def layer_formats(keys, read, metadata: dict | None, source: str) -> dict[str, dict]:
    """Per-layer quantisation configs of a safetensors file, from ``<layer>.comfy_quant`` tensors,
    the header's ``_quantization_metadata``, or the legacy ``scaled_fp8`` marker."""
    configs: dict[str, dict] = {}
    for key in keys:
        if key.endswith(".comfy_quant"):
            raw = read(key)
            try:
                configs[key[: -len(".comfy_quant")]] = json.loads(bytes(raw.to(torch.uint8).tolist()).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise ZImageInputError("quantised model file", f"'{source}' with an unreadable {key}", "JSON such as {\"format\": \"float8_e4m3fn\"}", "the file is corrupt: download it again") from None
    if metadata and "_quantization_metadata" in metadata:
        try:
            layers = json.loads(metadata["_quantization_metadata"]).get("layers", {})
        except ValueError:
            raise ZImageInputError("quantised model file", f"'{source}' with unreadable _quantization_metadata", "JSON", "download the file again") from None
        for layer, conf in layers.items():
            configs.setdefault(layer, conf)
    for key in keys:  # fp8 weights with a plain per-tensor weight_scale and no marker (older exporters)
        layer = key[: -len(".weight_scale")] if key.endswith(".weight_scale") else None
        if layer is not None and layer not in configs:
            weight = read(f"{layer}.weight")
            if weight is not None and weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                configs[layer] = {"format": "float8_e5m2" if weight.dtype == torch.float8_e5m2 else "float8_e4m3fn"}
    marker = next((k for k in keys if k == "scaled_fp8" or k.endswith(".scaled_fp8")), None)
    if marker is not None:
        fp8 = read(marker).dtype
        fmt = "float8_e5m2" if fp8 == torch.float8_e5m2 else "float8_e4m3fn"
        for key in keys:
            if key.endswith(".scale_weight"):
                configs.setdefault(key[: -len(".scale_weight")], {"format": fmt, "legacy_scale_key": "scale_weight"})
    return configs


def check_format(conf: dict, layer: str, source: str) -> str:
    fmt = conf.get("format")
    if fmt in COMFY_FORMATS:
        return fmt
    if fmt in KNOWN_UNSUPPORTED:
        found = f"'{source}': layer {layer} in the quantisation layout '{fmt}'"
        how = "this pack cannot compute it yet: use the fp8, int8, nvfp4, mxfp8 or GGUF version of the model"
    else:
        found = f"'{source}': layer {layer} in an unknown quantisation layout {fmt!r}"
        how = "update the pack, or use the bf16, fp8, int8, nvfp4, mxfp8 or GGUF version of the model"
    raise ZImageInputError("quantised model file", found, f"one of {sorted(COMFY_FORMATS)} or GGUF", how)


def comfy_weight(layer: str, conf: dict, read, source: str) -> QuantizedWeight:
    """The stored tensors of one Comfy-Org quantised layer, viewed in the dtypes ComfyUI views them in."""
    fmt = check_format(conf, layer, source)
    _, storage = COMFY_FORMATS[fmt]
    scale_key = conf.get("legacy_scale_key", "weight_scale")
    weight = read(f"{layer}.weight")
    tensors = {"weight": weight.view(storage) if weight.dtype != storage and weight.element_size() == 1 else weight}
    scale = read(f"{layer}.{scale_key}")
    if scale is None:
        raise ZImageInputError("quantised model file", f"'{source}': layer {layer} ({fmt}) without its {scale_key}", "the weight's scale tensor", "the file is incomplete: download it again")
    if fmt == "nvfp4":
        scale2 = read(f"{layer}.weight_scale_2")
        if scale2 is None:
            raise ZImageInputError("quantised model file", f"'{source}': nvfp4 layer {layer} without weight_scale_2", "nvfp4's global scale", "download the file again")
        tensors["weight_scale"] = scale.view(torch.float8_e4m3fn) if scale.dtype == torch.uint8 else scale
        tensors["weight_scale_2"] = scale2.float()
        shape = (weight.shape[0], weight.shape[1] * 2)
    elif fmt == "mxfp8":
        tensors["weight_scale"] = scale.view(torch.float8_e8m0fnu) if scale.dtype == torch.uint8 else scale
        shape = tuple(weight.shape)
    else:
        tensors["weight_scale"] = scale.float()
        shape = tuple(weight.shape)
    if tensors["weight"].dtype != storage:
        raise ZImageInputError("quantised model file", f"'{source}': layer {layer} marked {fmt} but stored as {weight.dtype}", f"{storage}", "the file is corrupt or mislabelled: download it again")
    options = {}
    params = conf.get("params") if isinstance(conf.get("params"), dict) else {}
    if fmt == "int8_tensorwise" and conf.get("convrot", params.get("convrot", False)):
        options = {"convrot": True, "convrot_groupsize": int(conf.get("convrot_groupsize", params.get("convrot_groupsize", 256)))}
        if shape[1] % options["convrot_groupsize"]:
            raise ZImageInputError("quantised model file", f"'{source}': ConvRot group {options['convrot_groupsize']} on layer {layer} with {shape[1]} inputs", "a group size dividing the input size", "the file is corrupt: download it again")
    return QuantizedWeight(fmt, tensors, shape, options)


def scale_keys(layer: str) -> tuple[str, ...]:
    """Every key a quantised layer may add beside its weight (not weights of their own)."""
    return tuple(f"{layer}.{s}" for s in ("weight_scale", "weight_scale_2", "input_scale", "scale_weight", "scale_input", "comfy_quant", "pre_quant_scale"))


# ---------------------------------------------------------------- the modules


@dataclass
class ComputePatch:
    """A LoRA added at compute time to a quantised layer: ``y[rows] += alpha·(x·downᵀ)·upᵀ`` or a dense delta."""

    up: torch.Tensor | None
    down: torch.Tensor | None
    alpha: float
    delta: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def on(self, device, dtype):
        key = (device, dtype)
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = tuple(t.to(device, dtype) if t is not None else None for t in (self.up, self.down, self.delta))
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        up, down, delta = self.on(x.device, x.dtype)
        if delta is not None:
            return F.linear(x, delta)
        return F.linear(F.linear(x, down), up) * self.alpha


class QuantizedLinear(torch.nn.Linear):
    """A Linear whose weight stays in its stored (quantised) form and is expanded per call.

    The stored tensors are parameters named ``stored_weight``, ``weight_scale``… ``weight`` is a
    meta tensor of the logical shape in the compute dtype, so code that asks a layer its weight's
    dtype or shape (diffusers' timestep embedder does) gets the compute dtype, not int8."""

    def __init__(self, quantized: QuantizedWeight, bias: torch.Tensor | None, compute_dtype: torch.dtype):
        torch.nn.Module.__init__(self)
        self.out_features, self.in_features = quantized.shape
        self.format = quantized.format
        self.options = dict(quantized.options)
        self.compute_dtype = compute_dtype
        for suffix, tensor in quantized.tensors.items():
            name = "stored_weight" if suffix == "weight" else suffix
            self.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))
        self.bias = None if bias is None else torch.nn.Parameter(bias.to(compute_dtype), requires_grad=False)
        self.patches: dict[object, ComputePatch] = {}
        self.fast_matmul = False  # comfy-kitchen's CUDA kernels (set by the loader's speed options)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return torch.empty(self.out_features, self.in_features, dtype=self.compute_dtype, device="meta")

    def stored(self) -> QuantizedWeight:
        tensors = {("weight" if n == "stored_weight" else n): p for n, p in self._parameters.items() if n != "bias" and p is not None}
        return QuantizedWeight(self.format, tensors, (self.out_features, self.in_features), self.options)

    @property
    def stored_nbytes(self) -> int:
        return self.stored().nbytes

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.stored().dequantize(dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        y = self._fast(x) if self.fast_matmul and x.is_cuda else None
        if y is None:
            y = F.linear(x, self.dequantized(x.dtype), self.bias)
        for patch in self.patches.values():
            y = y + patch(x)
        return y

    def _fast(self, x: torch.Tensor) -> torch.Tensor | None:
        """comfy-kitchen's quantised matmul on CUDA (int8 W8A8, fp8/mxfp8/nvfp4 tensor cores);
        None where the layout or the card has no fast kernel (then the weight is dequantised)."""
        if self.format.startswith(GGUF_PREFIX):
            return None
        qweight = self.stored().kitchen_tensor(x.dtype)
        if not qweight.layout_cls.supports_fast_matmul():
            return None
        try:
            if self.format == "int8_tensorwise":
                return F.linear(x, qweight, self.bias)
            from comfy_kitchen.tensor import QuantizedTensor

            flat = x.reshape(-1, x.shape[-1])
            qx = QuantizedTensor.from_float(flat, qweight._layout_cls)
            return F.linear(qx, qweight, self.bias).reshape(*x.shape[:-1], self.out_features)
        except Exception as exc:  # a kernel the card lacks: fall back once, say so
            log.warning("Z-Image: comfy-kitchen fast matmul for %s failed (%s); dequantising instead", self.format, exc)
            self.fast_matmul = False
            return None


class QuantizedEmbedding(torch.nn.Embedding):
    """An Embedding kept quantised; only the looked-up rows are expanded (GGUF text encoders
    quantise the 151936×2560 token table)."""

    def __init__(self, quantized: QuantizedWeight, compute_dtype: torch.dtype, padding_idx=None):
        torch.nn.Module.__init__(self)
        self.num_embeddings, self.embedding_dim = quantized.shape
        self.padding_idx = padding_idx
        self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse = None, 2.0, False, False
        self.inner = QuantizedLinear(quantized, None, compute_dtype)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.inner.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        stored = self.inner.stored()
        flat = ids.reshape(-1)
        if stored.row_independent:
            rows = stored.rows(flat).dequantize(self.inner.compute_dtype)
        else:
            rows = stored.dequantize(self.inner.compute_dtype)[flat]
        return rows.reshape(*ids.shape, self.embedding_dim)


def install(module: torch.nn.Module, quantized: dict[str, QuantizedWeight], plain: dict[str, torch.Tensor], compute_dtype: torch.dtype, source: str) -> None:
    """Replace the Linear (and Embedding) layers named in ``quantized`` by their quantised forms;
    their biases are taken from ``plain`` (and removed from it)."""
    for layer, weight in quantized.items():
        try:
            old = module.get_submodule(layer)
        except AttributeError:
            raise ZImageInputError("quantised model file", f"'{source}': a quantised layer {layer} the model does not have", "a file for this model", "use a Z-Image file") from None
        expected = (old.num_embeddings, old.embedding_dim) if isinstance(old, torch.nn.Embedding) else (old.out_features, old.in_features) if isinstance(old, torch.nn.Linear) else None
        if expected is None:
            raise ZImageInputError("quantised model file", f"'{source}': layer {layer} ({type(old).__name__}) stored quantised", "quantised Linear layers only", "use another file")
        if weight.format in ("nvfp4", "mxfp8") and all(e <= s < e + 128 for e, s in zip(expected, weight.shape)):
            weight = QuantizedWeight(weight.format, weight.tensors, tuple(expected), weight.options)  # stored padded to whole blocks
        if tuple(weight.shape) != tuple(expected):
            raise ZImageInputError("quantised model file", f"'{source}': layer {layer} of shape {tuple(weight.shape)}", f"{tuple(expected)}", "the file is for a different model size")
        if isinstance(old, torch.nn.Embedding):
            new = QuantizedEmbedding(weight, compute_dtype, old.padding_idx)
        else:
            new = QuantizedLinear(weight, plain.pop(f"{layer}.bias", None), compute_dtype)
        parent_name, _, child = layer.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, new)


def quantized_layers(module: torch.nn.Module) -> dict[str, QuantizedLinear]:
    return {name: sub for name, sub in module.named_modules() if isinstance(sub, QuantizedLinear)}
