"""Quantised files held quantised: Comfy-Org mixed precision (written as ComfyUI writes them, with
comfy-kitchen's own quantisers) and GGUF (written with the gguf package's writer).

Tolerances. Two checks per format:
1. exactness of the pack's compute path: every quantised layer dequantises bit-for-bit to what the
   format's reference dequantiser (comfy-kitchen / gguf) makes of the file's tensors, and the
   velocity equals diffusers' module holding those dequantised weights as plain bf16 (same ops, so
   ≤ 1e-5 of the velocity's scale);
2. closeness to the bf16 model: the relative L2 error of the velocity stays below 4 × the weights'
   own relative quantisation error + 0.01 (the output error of a network is proportional to its
   weight error; this random tiny model amplifies it by < 4, measured 1.5–3.5 across formats).
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
COMFY_CASES = {
    "float8_e4m3fn": ("float8_e4m3fn", {}, torch.float8_e4m3fn),
    "float8_e5m2": ("float8_e5m2", {}, torch.float8_e5m2),
    "int8_tensorwise": ("int8_tensorwise", {}, torch.int8),
    "int8_convrot": ("int8_tensorwise", {"convrot_groupsize": 256}, torch.int8),
    "nvfp4": ("nvfp4", {}, torch.uint8),
    "mxfp8": ("mxfp8", {}, torch.float8_e4m3fn),
    "legacy_scaled_fp8": ("scaled_fp8", {}, torch.float8_e4m3fn),
    "header_metadata": ("float8_e4m3fn", {"header_metadata": True}, torch.float8_e4m3fn),
}
GGUF_REAL = ["Q8_0", "Q5_1", "Q4_0"]  # the gguf package quantises these itself
GGUF_KQUANTS = ["Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]


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


def _plain_twin(loaded, bf16, dtype=torch.bfloat16):
    """diffusers' module with every quantised layer's dequantised weight as a plain weight."""
    state = {k: v.to(dtype) for k, v in bf16.module.state_dict().items()}
    for name, layer in quantized_layers(loaded.module).items():
        state[f"{name}.weight"] = layer.dequantized(dtype)
    twin = dm.make_transformer(seed=0, **WIDE).to(dtype)
    twin.load_state_dict(state)
    return type(bf16)(module=twin, storage_dtype=dtype, compute_dtype=dtype, source="twin")


def _weight_error(loaded, original):
    errs = [_rel(layer.dequantized(torch.float32), original.get_submodule(name).weight.float()) for name, layer in quantized_layers(loaded.module).items()]
    return max(errs)


@pytest.mark.parametrize("case", list(COMFY_CASES))
def test_comfy_quantised_transformer_held_and_computed_in_its_format(case, wide):
    model, root, bf16, inputs = wide
    fmt, kwargs, storage = COMFY_CASES[case]
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
        assert "ConvRot" in loaded.quantization and any(layer.options.get("convrot") for layer in layers.values())

    # 1. exact: the fused qkv splits and every layer dequantise as the reference dequantiser does
    with safe_open(path, "pt") as handle:
        keys = set(handle.keys())
        if fmt != "scaled_fp8":
            qkv_key = "layers.1.attention.qkv"
            conf = json.loads(bytes(handle.get_tensor(f"{qkv_key}.comfy_quant").tolist())) if f"{qkv_key}.comfy_quant" in keys else {"format": fmt}
            from zimage_pack.loaders.quantized import comfy_weight
            full = comfy_weight(qkv_key, conf, lambda k: handle.get_tensor(k) if k in keys else None, "x").kitchen_tensor(torch.float32).dequantize()
            attn = loaded.module.layers[1].attention
            split = torch.cat([attn.to_q.dequantized(torch.float32), attn.to_k.dequantized(torch.float32), attn.to_v.dequantized(torch.float32)])
            assert torch.equal(split, full)
    v = _velocity(loaded, inputs)
    v_twin = _velocity(_plain_twin(loaded, bf16), inputs)
    assert (v - v_twin).abs().max() <= 1e-5 * v_twin.abs().max()
    # 2. close to the bf16 model, by the format's own precision
    bound = 4 * _weight_error(loaded, model) + 0.01
    assert _rel(v, _velocity(bf16, inputs)) <= bound


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
        v_twin = _velocity(_plain_twin(loaded, bf16), inputs)
        v = _velocity(loaded, inputs)
        assert (v - v_twin).abs().max() <= 1e-5 * v_twin.abs().max()
        assert _rel(v, _velocity(bf16, inputs)) <= 4 * _weight_error(loaded, model) + 0.01
    else:
        assert not layers
        assert _rel(_velocity(loaded, inputs), _velocity(bf16, inputs)) < 0.03  # F16/BF16 rounding


@pytest.mark.parametrize("qtype", GGUF_KQUANTS)
def test_gguf_kquants_dequantise_as_the_reference(qtype, wide):
    """K-quants (Q6_K … Q2_K, the blocks of Q4_K_M / Q5_K_M / Q4_K_S / Q3_K_S files) against the gguf
    package's own dequantiser, read from the file independently."""
    import gguf

    model, root, bf16, inputs = wide
    path = dq.write_gguf_transformer(model, str(root / f"k_{qtype}.gguf"), qtype)
    loaded = load_transformer(path)
    reader = gguf.GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name == "layers.0.feed_forward.w1.weight")
    want = torch.from_numpy(gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).astype(np.float32))
    got = loaded.module.layers[0].feed_forward.w1.dequantized(torch.float32)
    assert loaded.module.layers[0].feed_forward.w1.format == f"gguf_{qtype}"
    # diffusers' K-quant dequantisation multiplies the f16 block scales in half precision: 1e-3 relative
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()
    v, v_twin = _velocity(loaded, inputs), _velocity(_plain_twin(loaded, bf16), inputs)
    assert torch.isfinite(v).all() and (v - v_twin).abs().max() <= 1e-5 * v_twin.abs().max()


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
    loaded = load_transformer(dq.write_quantized_transformer(model, str(tmp_path / "int8.safetensors"), "int8_tensorwise"))
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
    # reference, in float32 so that only the order of operations differs: the dequantised weights with
    # the LoRA merged into a plain module
    twin = _plain_twin(loaded, bf16, torch.float32)
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
