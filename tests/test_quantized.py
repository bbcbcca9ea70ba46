"""Quantised files held quantised: Comfy-Org mixed precision (written as ComfyUI writes them, with
comfy-kitchen's own quantisers) and GGUF (written with the gguf package's writer and quantiser).

Three checks per format, none of them built from the pack's own dequantiser:
1. every quantised layer of the file, read straight from it (safetensors / gguf.GGUFReader, not
   through the pack), dequantised by the format's reference (comfy-kitchen's eager CPU functions;
   gguf.quants.dequantize) equals the pack's dequantised weight: bit for bit for the Comfy-Org
   formats (the same arithmetic on the same bytes; ConvRot's un-rotation is a float32 matmul, whose
   summation order may differ with the rows' count: 2^-16 of the weight's max, a few float32 ulps of
   a 256-term sum, and ≤ 1 bf16 ulp once rounded to bf16; bit for bit here too), and to float16 rounding for GGUF (the pack, like diffusers and ComfyUI-GGUF,
   multiplies the f16 block scales in float16; the gguf package in float32);
2. the reference weights are within the format's precision ``EPS`` of the weights that were
   quantised (so 1. does not compare two wrong things), and the velocity of diffusers' module
   holding the reference weights as plain weights equals the pack's velocity;
3. the velocity is within ``2 × EPS`` of the bf16 model's: this random network's output error is
   its weights' RMS relative error times a gain measured at 2.8–3.4 for the Comfy-Org files and
   3.8–4.9 for GGUF (which quantises the embedders and the final layer too), and rounding errors
   spread over ±half a step have an RMS of 1/4–1/2 of the worst case EPS (measured 0.26–0.43):
   ≈ 1.5 × EPS at most, 2 × EPS the bound (measured margins 1.2–2.3).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders import demo_quantized as dq
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.lora_merge import prepare_lora, sync_lora_stack
from zimage_pack.loaders.quantized import QuantizedLinear, quantized_layers
from zimage_pack.loaders.residency import apply_offloading, module_bytes, remove_offloading
from zimage_pack.loaders.text_encoder import encode_prompts, load_text_encoder
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.samplers.turbo import predict_velocity, sample

# dim 256: ConvRot's 256-wide Hadamard groups fit the inputs, as they fit the real 3840
WIDE = dict(dim=256, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[32, 48, 48])
# case -> (format written, writer kwargs, stored weight dtype, comfy-kitchen layout kwargs replacing the writer's)
COMFY_CASES = {
    "float8_e4m3fn": ("float8_e4m3fn", {}, torch.float8_e4m3fn, None),
    "float8_e5m2": ("float8_e5m2", {}, torch.float8_e5m2, None),
    "int8_tensorwise": ("int8_tensorwise", {}, torch.int8, None),  # one scale per row, as Comfy-Org's files
    "int8_one_scale": ("int8_tensorwise", {}, torch.int8, {"per_channel": False}),  # one scale per tensor
    "int8_convrot": ("int8_tensorwise", {"convrot_groupsize": 256}, torch.int8, None),
    "nvfp4": ("nvfp4", {}, torch.uint8, None),
    "mxfp8": ("mxfp8", {}, torch.float8_e4m3fn, None),
    "legacy_scaled_fp8": ("scaled_fp8", {}, torch.float8_e4m3fn, None),
    "header_metadata": ("float8_e4m3fn", {"header_metadata": True}, torch.float8_e4m3fn, None),
}
GGUF_REAL = ["Q8_0", "Q5_1", "Q4_0"]  # the gguf package quantises these itself
GGUF_KQUANTS = ["Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]

# Peak / RMS of the seeded Gaussian weights (std 0.05) over the groups a format scales together; the
# premise of the integer formats' EPS below, checked on every layer (measured ≤ 5.4 for rows and
# whole tensors, ≤ 4.3 for blocks of 32; a block of 16 is ≤ √16 = 4 whatever its values).
KAPPA_ROW = KAPPA_TENSOR = 5.5
KAPPA_32 = 4.5
# EPS: the worst relative L2 error of a weight stored in each format, from its precision.
EPS = {
    # e4m3, 3 mantissa bits, round to nearest: each element within 2^-4 of itself. (Elements under the
    # smallest normal, 2^-6 of the scaled range, err by < 2^-10 × the scale in absolute terms: nothing.)
    "float8_e4m3fn": 2**-4,
    "scaled_fp8": 2**-4,
    # mxfp8: e4m3 elements under one power-of-two scale per 32 inputs (the block max lands in (224, 448]): 2^-4
    "mxfp8": 2**-4,
    # e5m2, 2 mantissa bits: 2^-3
    "float8_e5m2": 2**-3,
    # int8: a step of (peak of the row, or of the tensor)/127, so ≤ peak/254 per element, ≤ κ/254 of the
    # group's RMS (ConvRot rounds the Hadamard-rotated row; an orthogonal rotation keeps the error's L2)
    "int8_tensorwise": KAPPA_ROW / 254,
    # nvfp4: e2m1 (1 mantissa bit) per 16 inputs, block max → 6·s: ≤ 2^-2 relative from 1·s up; below,
    # absolute ≤ s/4 = max/24 with max ≤ 4 × the block's RMS, so ‖e‖² ≤ ‖w‖²/16 + 16·(max/24)² ≤ ‖w‖²·(1/16 + 1/36)
    "nvfp4": (1 / 16 + 1 / 36) ** 0.5,  # 0.30
    # GGUF, blocks of 32 (f16 scales): half a step, relative to the block's RMS through κ:
    # Q8_0 step peak/127; Q5_1 step (max − min)/31 ≤ 2·peak/31; Q4_0 step peak/8
    "Q8_0": KAPPA_32 / 254,
    "Q5_1": KAPPA_32 / 31,
    "Q4_0": KAPPA_32 / 16,
}
# the group each integer format's κ is taken over: 0 = rows, -1 = the whole tensor, n = blocks of n inputs
KAPPA_GROUP = {"int8_tensorwise": (0, KAPPA_ROW), "int8_one_scale": (-1, KAPPA_TENSOR), "Q8_0": (32, KAPPA_32), "Q5_1": (32, KAPPA_32), "Q4_0": (32, KAPPA_32)}


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    model = dm.make_transformer(seed=5, **WIDE)
    root = tmp_path_factory.mktemp("quant")
    bf16 = load_transformer(dm.write_transformer(model, str(root / "bf16.safetensors"), "comfy", dtype=torch.bfloat16))
    torch.manual_seed(0)
    inputs = (torch.randn(1, 16, 8, 8), 0.7, [torch.randn(6, 32)])
    return model, root, bf16, inputs


def _velocity(loaded, inputs):
    x, sigma, feats = inputs
    return predict_velocity(loaded, x, sigma, feats, None)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _modules(layer: str) -> list[str]:
    """The diffusers modules (rows in order) a ComfyUI-named file layer becomes."""
    if layer.endswith(".attention.qkv"):
        return [layer[: -len("qkv")] + part for part in ("to_q", "to_k", "to_v")]
    if layer == "x_embedder":
        return ["all_x_embedder.2-1"]
    if layer.startswith("final_layer."):
        return ["all_final_layer.2-1." + layer[len("final_layer."):]]
    return [layer.replace(".attention.out", ".attention.to_out.0")]


def _peak_to_rms(weight: torch.Tensor, group: int) -> float:
    w = weight.float()
    w = w.reshape(1, -1) if group < 0 else w if group == 0 else w.reshape(-1, group)
    return float((w.abs().amax(1) / w.pow(2).mean(1).sqrt()).max())


def _kitchen_reference(path: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every quantised layer of a Comfy-Org file, read with safetensors and dequantised by comfy-kitchen's
    eager CPU functions: {file layer: weight}, storage padding (nvfp4 / mxfp8 blocks) still on."""
    from comfy_kitchen.backends.eager import quantization as ck

    out = {}
    with safe_open(path, "pt") as handle:
        keys = set(handle.keys())
        header = json.loads((handle.metadata() or {}).get("_quantization_metadata", "{}")).get("layers", {})
        for key in keys:
            if not key.endswith(".weight") or handle.get_slice(key).get_dtype() not in ("F8_E4M3", "F8_E5M2", "I8", "U8"):
                continue
            layer = key[: -len(".weight")]

            def get(suffix, layer=layer):
                return handle.get_tensor(f"{layer}.{suffix}")

            if f"{layer}.comfy_quant" in keys:
                conf = json.loads(bytes(get("comfy_quant").tolist()).decode("utf-8"))
            elif layer in header:
                conf = header[layer]
            else:  # the legacy layout: a scaled_fp8 marker and scale_weight
                assert "scaled_fp8" in keys and f"{layer}.scale_weight" in keys
                conf = {"format": "scaled_fp8"}
            fmt = conf["format"]
            if fmt in ("float8_e4m3fn", "float8_e5m2", "scaled_fp8"):
                w = ck.dequantize_per_tensor_fp8(get("weight"), get("scale_weight" if fmt == "scaled_fp8" else "weight_scale"), dtype)
            elif fmt == "int8_tensorwise" and conf.get("convrot"):
                w = ck.dequantize_int8_convrot_weight(get("weight"), get("weight_scale"), conf["convrot_groupsize"]).to(dtype)
            elif fmt == "int8_tensorwise":
                w = ck.dequantize_int8_simple(get("weight"), get("weight_scale")).to(dtype)
            elif fmt == "nvfp4":
                w = ck.dequantize_nvfp4(get("weight"), get("weight_scale_2"), get("weight_scale"), dtype)
            elif fmt == "mxfp8":
                w = ck.dequantize_mxfp8(get("weight"), get("weight_scale"), dtype)
            else:
                raise AssertionError(f"{layer}: unexpected {conf}")
            out[layer] = w
    return out


def _gguf_reference(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every 2-D quantised tensor of a GGUF file, read with gguf.GGUFReader and dequantised by
    gguf.quants.dequantize (numpy, float32): ({file layer: weight}, {file layer: type name})."""
    import gguf

    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)
    weights, types = {}, {}
    for tensor in gguf.GGUFReader(path).tensors:
        if tensor.tensor_type not in plain and len(tensor.shape) == 2:
            layer = tensor.name[: -len(".weight")]
            weights[layer] = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type), dtype=np.float32))
            types[layer] = tensor.tensor_type.name
    return weights, types


def _pack_weight(loaded, layer: str, dtype: torch.dtype) -> torch.Tensor:
    """The pack's dequantised weight of a file layer (the fused qkv from its three split layers)."""
    parts = [loaded.module.get_submodule(name) for name in _modules(layer)]
    assert all(isinstance(part, QuantizedLinear) for part in parts), layer
    return torch.cat([part.dequantized(dtype) for part in parts])


def _reference_twin(bf16, reference: dict[str, torch.Tensor], dtype=torch.bfloat16):
    """diffusers' module holding the reference-dequantised weights as plain weights (the rest: the bf16 model's)."""
    state = {k: v.to(dtype) for k, v in bf16.module.state_dict().items()}
    for layer, weight in reference.items():
        names = _modules(layer)
        rows = [state[f"{name}.weight"].shape[0] for name in names]
        for name, part in zip(names, weight.split(rows)):
            state[f"{name}.weight"] = part.to(dtype)
    twin = dm.make_transformer(seed=0, **WIDE).to(dtype)
    twin.load_state_dict(state)
    return type(bf16)(module=twin, storage_dtype=dtype, compute_dtype=dtype, source="twin")


def _check_every_layer(loaded, reference, originals, eps_key, group_kappa=None):
    """The reference covers every quantised layer of the pack (one to one) and is within EPS of the quantiser's input."""
    assert sorted(n for layer in reference for n in _modules(layer)) == sorted(quantized_layers(loaded.module))
    for layer, want in reference.items():
        original = originals[f"{layer}.weight"].float()
        if group_kappa is not None and (group_kappa[0] <= 0 or original.shape[1] % group_kappa[0] == 0):
            assert _peak_to_rms(original, group_kappa[0]) <= group_kappa[1], layer  # EPS's premise
        assert _rel(want, original) <= EPS[eps_key], (layer, _rel(want, original))


@pytest.mark.parametrize("case", list(COMFY_CASES))
def test_comfy_quantised_transformer_held_and_computed_in_its_format(case, wide, monkeypatch):
    from comfy_kitchen.backends.eager.quantization import rotate_int8_convrot_weight

    model, root, bf16, inputs = wide
    fmt, kwargs, storage, layout_kwargs = COMFY_CASES[case]
    if layout_kwargs is not None:
        layout, _ = dq._COMFY_LAYOUTS[fmt]
        monkeypatch.setitem(dq._COMFY_LAYOUTS, fmt, (layout, layout_kwargs))
    path = dq.write_quantized_transformer(model, str(root / f"{case}.safetensors"), fmt, **kwargs)
    loaded = load_transformer(path)
    layers = quantized_layers(loaded.module)
    assert len(layers) == 4 * 7 + 3  # 4 blocks × (q, k, v, out, w1, w2, w3) + adaLN of the 3 that have one
    assert all(layer.stored_weight.dtype == storage for layer in layers.values())
    # device bytes ≈ file bytes: the module holds what the file holds (less the JSON and header)
    file_size = (root / f"{case}.safetensors").stat().st_size
    assert abs(module_bytes(loaded.module) - file_size) < 0.02 * file_size
    assert module_bytes(loaded.module) < 0.75 * module_bytes(bf16.module)
    if case == "int8_convrot":
        assert "ConvRot" in loaded.quantization and sum(bool(layer.options.get("convrot")) for layer in layers.values()) == 4 * 6 + 3  # all but w2 (682 inputs)
    if case == "int8_one_scale":
        assert all(layer.weight_scale.numel() == 1 for layer in layers.values())

    # 1. every layer, in float32 and in the compute dtype, as comfy-kitchen dequantises the file's tensors
    originals = {k: v.to(torch.bfloat16) for k, v in dm.diffusers_to_comfy_transformer_keys(model.state_dict()).items()}  # what the quantiser got
    reference = {}  # by dtype: float32 for the precision check, the compute dtype for the twin (the pack computes in it)
    for dtype in (torch.float32, loaded.compute_dtype):
        reference[dtype] = {}
        for layer, full in _kitchen_reference(path, dtype).items():
            got = _pack_weight(loaded, layer, dtype)
            # nvfp4 / mxfp8 store whole blocks (16 / 32 inputs, rows to the 128-row scale tiles): cut to the layer's shape
            assert all(s - g < 128 for s, g in zip(full.shape, got.shape)) and (full.shape == got.shape or fmt in ("nvfp4", "mxfp8"))
            want = full[: got.shape[0], : got.shape[1]]
            if fmt == "int8_tensorwise" and kwargs.get("convrot_groupsize"):
                torch.testing.assert_close(got.float(), want.float(), rtol=2**-7 if dtype == torch.bfloat16 else 0,
                                           atol=2**-16 * float(want.abs().max()), msg=layer)  # bf16: ≤ 1 ulp where the float32 sums round apart
            else:
                assert torch.equal(got, want), (layer, dtype)
            reference[dtype][layer] = want
    # 2. the reference is the weights that were quantised, to the format's precision (eps_key: the format's row)
    eps_key = {"int8_one_scale": "int8_tensorwise"}.get(case, fmt)
    group_kappa = KAPPA_GROUP.get(case if case == "int8_one_scale" else fmt)
    _check_every_layer(loaded, reference[torch.float32], originals, eps_key, group_kappa)
    if case == "int8_convrot":  # the rounding happened in the Hadamard-rotated basis: κ of the rotated rows too
        for layer in reference[torch.float32]:
            w = originals[f"{layer}.weight"].float()
            assert _peak_to_rms(rotate_int8_convrot_weight(w, 256) if w.shape[1] % 256 == 0 else w, 0) <= KAPPA_ROW, layer
    v = _velocity(loaded, inputs)
    v_twin = _velocity(_reference_twin(bf16, reference[loaded.compute_dtype], loaded.compute_dtype), inputs)
    assert (v - v_twin).abs().max() <= 1e-5 * v_twin.abs().max()
    # 3. close to the bf16 model, by the format's precision (a fixed bound: see the module's docstring)
    assert _rel(v, _velocity(bf16, inputs)) <= 2 * EPS[eps_key]


@pytest.mark.parametrize("qtype", GGUF_REAL + ["F16", "BF16"])
def test_gguf_transformer(qtype, wide):
    model, root, bf16, inputs = wide
    path = dq.write_gguf_transformer(model, str(root / f"z_{qtype}.gguf"), qtype, one_d_pad_tokens=True)
    loaded = load_transformer(path)
    layers = quantized_layers(loaded.module)
    if qtype in GGUF_REAL:
        assert layers and all(layer.stored_weight.dtype == torch.uint8 and layer.format == f"gguf_{qtype}" for layer in layers.values())
        import gguf

        reader = gguf.GGUFReader(str(root / f"z_{qtype}.gguf"))
        quantised_file_bytes = sum(int(t.n_bytes) for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType[qtype])
        assert sum(layer.stored_nbytes for layer in layers.values()) == quantised_file_bytes  # the bytes as stored, no expansion
        # 1. every 2-D quantised tensor as the gguf package dequantises it. The pack multiplies the f16
        # scale by the code in float16 (as diffusers and ComfyUI-GGUF do), gguf in float32: one f16
        # rounding, ≤ 2^-11 relative (+ half an f16 subnormal step) for Q8_0 / Q4_0 (d·q); Q5_1's d·q + m
        # rounds twice, values ≤ 2 × the block's peak: ≤ 2^-9 of the block's peak
        reference, types = _gguf_reference(path)
        assert set(types.values()) == {qtype}
        for layer, want in reference.items():
            got = _pack_weight(loaded, layer, torch.float32)
            slack = 2**-11 * want.abs() + 2**-25 if qtype != "Q5_1" else 2**-9 * want.abs().reshape(-1, 32).amax(1, keepdim=True).expand(-1, 32).reshape(want.shape) + 2**-24
            assert ((got - want).abs() <= slack).all(), layer
        # 2. within the format's precision of the float32 weights that were quantised
        originals = dm.diffusers_to_comfy_transformer_keys(model.state_dict())
        _check_every_layer(loaded, reference, originals, qtype, KAPPA_GROUP[qtype])
        # 3. close to the bf16 model (a fixed bound: see the module's docstring)
        assert _rel(_velocity(loaded, inputs), _velocity(bf16, inputs)) <= 2 * EPS[qtype]
        # the pack's computation = diffusers' module holding the reference weights, in float32 (in bf16 the
        # f16-vs-f32 differences above flip bf16 roundings): ≤ the network's gain (≤ 5, see the docstring)
        # × the weights' difference (≤ 2^-9 of a block's peak); measured ≤ 0.002
        for layer in layers.values():
            layer.compute_dtype = torch.float32
        fp32 = type(loaded)(module=loaded.module.float(), storage_dtype=torch.float32, compute_dtype=torch.float32, source="q")
        assert _rel(_velocity(fp32, inputs), _velocity(_reference_twin(bf16, reference, torch.float32), inputs)) <= 5 * 2**-9
    else:
        assert not layers
        assert _rel(_velocity(loaded, inputs), _velocity(bf16, inputs)) < 0.03  # F16/BF16 rounding


@pytest.mark.parametrize("qtype", GGUF_KQUANTS)
def test_gguf_kquants_dequantise_as_the_reference(qtype, wide):
    """K-quants (Q6_K … Q2_K, the blocks of Q4_K_M / Q5_K_M / Q4_K_S / Q3_K_S files): every tensor against
    the gguf package's own dequantiser, read from the file independently."""
    model, root, bf16, inputs = wide
    path = dq.write_gguf_transformer(model, str(root / f"k_{qtype}.gguf"), qtype)
    loaded = load_transformer(path)
    reference, types = _gguf_reference(path)
    assert set(types.values()) == {qtype}
    assert sorted(n for layer in reference for n in _modules(layer)) == sorted(quantized_layers(loaded.module))
    for layer, want in reference.items():
        assert all(loaded.module.get_submodule(n).format == f"gguf_{qtype}" for n in _modules(layer))
        got = _pack_weight(loaded, layer, torch.float32)
        # the pack (as diffusers) computes the super-block scale × sub-block scale × code − min in float16:
        # three f16 roundings of ≤ 2^-11 each, of values up to the tensor's max: 2^-9 of the max
        assert (got - want).abs().max() <= 2**-9 * want.abs().max(), layer
    # random codes make a network of no meaning (velocities up to 1e5): only that it runs
    assert torch.isfinite(_velocity(loaded, inputs)).all()


def test_gguf_mixed_types_per_tensor_like_q4_k_m(wide):
    """_M / _S files mix block types per tensor; each layer keeps its own."""
    model, root, bf16, inputs = wide
    state = dm.diffusers_to_comfy_transformer_keys(model.state_dict())
    path = str(root / "mixed.gguf")
    dq.write_gguf(state, path, "lumina2", lambda name: "Q6_K" if "feed_forward.w3" in name else "Q4_K", lambda n: n.endswith(".weight"))
    loaded = load_transformer(path)
    assert loaded.module.layers[0].feed_forward.w3.format == "gguf_Q6_K" and loaded.module.layers[0].feed_forward.w1.format == "gguf_Q4_K"
    assert torch.isfinite(_velocity(loaded, inputs)).all()


def test_fp8_mixed_text_encoder_features_match_bf16(tmp_path, tokenizer_dir):
    model = dm.make_text_encoder(seed=3, hidden_size=256, intermediate_size=512, head_dim=64, num_attention_heads=4, num_key_value_heads=2)
    ref = load_text_encoder(dm.write_text_encoder(model, str(tmp_path / "qwen_3_4b.safetensors")), tokenizer_dir, "bf16")
    want = encode_prompts(ref, ["a red fox in snow, 35mm photo"])[0]
    for fmt, bound in (("float8_e4m3fn", 0.08), ("int8_tensorwise", 0.04), ("nvfp4", 0.25)):
        te = load_text_encoder(dq.write_quantized_text_encoder(model, str(tmp_path / f"qwen_3_4b_{fmt}_mixed.safetensors"), fmt), tokenizer_dir)
        layers = quantized_layers(te.model)
        assert len(layers) == 2 * 7 and not any(name.startswith("layers.0.") for name in layers)  # layer 0 stays bf16: mixed
        got = encode_prompts(te, ["a red fox in snow, 35mm photo"])[0]
        # before this pack held the scales, fp8_mixed features were off by ~1e10: here within the format's precision
        assert _rel(got, want) < bound, fmt
    te = load_text_encoder(dq.write_gguf_text_encoder(model, str(tmp_path / "Qwen3-4B-Q8_0.gguf"), "Q8_0"), tokenizer_dir)
    assert isinstance(te.model.layers[0].mlp.down_proj, QuantizedLinear)
    assert _rel(encode_prompts(te, ["a red fox in snow, 35mm photo"])[0], want) < 0.06


@pytest.mark.parametrize("fmt", ["convrot_w4a4", "float7_made_up"])
def test_unsupported_layout_refused_with_its_name(fmt, tmp_path, wide):
    model = wide[0]
    state = dm.diffusers_to_comfy_transformer_keys({k: v.contiguous() for k, v in model.state_dict().items()})
    state = {k: v.to(torch.bfloat16) for k, v in state.items()}
    state["layers.0.attention.qkv.weight"] = state["layers.0.attention.qkv.weight"].to(torch.int8)
    state["layers.0.attention.qkv.weight_scale"] = torch.ones(())
    state["layers.0.attention.qkv.comfy_quant"] = dq.comfy_quant_tensor({"format": fmt})
    path = str(tmp_path / "z_image_odd.safetensors")
    save_file(state, path)
    with pytest.raises(ZImageInputError) as err:
        load_transformer(path)
    assert fmt in str(err.value) and "z_image_odd.safetensors" in str(err.value)


def test_truncated_gguf_refused(tmp_path, wide):
    path = dq.write_gguf_transformer(wide[0], str(tmp_path / "cut.gguf"), "Q8_0")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ZImageInputError, match="cut.gguf"):
        load_transformer(path)


def test_lora_on_a_quantised_model_at_compute_time(tmp_path, wide):
    """The LoRA is added to the quantised layers' outputs: the stored bytes never change, the result
    equals the dequantised model with the LoRA merged in float32, and removing it is exact."""
    from zimage_pack.loaders.demo_loras import write_lora

    model, root, bf16, inputs = wide
    path = dq.write_quantized_transformer(model, str(tmp_path / "int8.safetensors"), "int8_tensorwise")
    loaded = load_transformer(path)
    lora_path = str(tmp_path / "style.safetensors")
    write_lora(bf16.module, lora_path, "ai-toolkit", seed=4)
    stored_before = {n: p.clone() for n, p in loaded.module.named_parameters()}
    plain = _velocity(loaded, inputs)
    patch, report = prepare_lora(loaded.module, lora_path, 0.8)
    assert not report.not_applied
    patched = loaded.with_lora(patch)
    x, sigma, feats = inputs
    from zimage_pack.loaders.param_sets import prepare_weights
    prepare_weights(patched)
    with_lora = _velocity(patched, inputs)
    assert all(torch.equal(p, stored_before[n]) for n, p in loaded.module.named_parameters())  # nothing re-quantised
    # reference, in float32 so that only the order of operations differs: comfy-kitchen's dequantisation
    # of the file's weights with the LoRA merged into a plain module
    twin = _reference_twin(bf16, _kitchen_reference(path, torch.float32), torch.float32)
    twin_patch, _ = prepare_lora(twin.module, lora_path, 0.8)
    sync_lora_stack(twin.module, (twin_patch,))
    for layer in quantized_layers(loaded.module).values():
        layer.compute_dtype = torch.float32
    fp32 = type(patched)(module=loaded.module.float(), storage_dtype=torch.float32, compute_dtype=torch.float32, source="q", lora_stack=patched.lora_stack)
    got, want = _velocity(fp32, inputs), _velocity(twin, inputs)
    assert _rel(got, want) < 1e-5
    assert _rel(with_lora, plain) > 5 * _rel(with_lora.float(), want)  # the LoRA's effect is far above bf16 noise
    prepare_weights(type(patched)(module=loaded.module, storage_dtype=torch.float32, compute_dtype=torch.float32, source="q"))
    assert not any(layer.patches for layer in quantized_layers(loaded.module).values())  # removed exactly


@pytest.mark.parametrize("mode", ["block_offload", "leaf_offload"])
def test_offload_modes_equal_the_full_run(mode, wide):
    """diffusers' group offloading (onto the CPU here: the hooks, groups and moves all run) gives
    exactly the full run, for a quantised model too."""
    model, root, bf16, inputs = wide
    loaded = load_transformer(dq.write_quantized_transformer(model, str(root / f"off_{mode}.safetensors"), "float8_e4m3fn"))
    feats, latent = inputs[2], torch.zeros(1, 16, 8, 8)
    want = sample(loaded, feats, latent, seed=3, steps=2)
    apply_offloading(loaded.module, mode, torch.device("cpu"))
    try:
        got = sample(loaded, feats, latent, seed=3, steps=2)
    finally:
        remove_offloading(loaded.module)
    assert torch.equal(got, want)


def test_attention_backend_choice_and_compile_wiring(model_files):
    from zimage_pack.loaders.speed import compile_blocks, set_attention

    loaded = load_transformer(model_files["comfy"])
    set_attention(loaded.module, "sdpa")
    with pytest.raises(ZImageInputError, match="attention"):
        set_attention(loaded.module, "xformers_made_up")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ZImageInputError, match="flash-attn"):
            set_attention(loaded.module, "flash_varlen")
    compile_blocks(loaded.module)  # compiles lazily, on the first call
    blocks = [b for b in loaded.module.modules() if type(b).__name__ == "ZImageTransformerBlock"]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)


def test_two_step_model_from_a_quantised_file_runs_but_is_not_saved_as_a_bundle(tmp_path, wide):
    from zimage_pack.loaders.step_decoupled import StepSettings, from_models, save_bundle
    from zimage_pack.samplers.two_step import sample_two_step

    model, root, bf16, inputs = wide
    loaded = load_transformer(dq.write_quantized_transformer(model, str(tmp_path / "fp8.safetensors"), "float8_e4m3fn"))
    steps = from_models(loaded, loaded)
    out = sample_two_step(steps, inputs[2], torch.zeros(1, 16, 8, 8), 5, StepSettings())[0]
    want = sample(loaded, inputs[2], torch.zeros(1, 16, 8, 8), seed=5, steps=2)
    assert torch.allclose(out, want, atol=1e-5)  # same model twice = the 8-step sampler's 2-step path
    with pytest.raises(ZImageInputError, match="quantised"):
        save_bundle(steps, str(tmp_path / "b.safetensors"))
