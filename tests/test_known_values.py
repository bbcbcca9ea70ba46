"""Quantised text encoders against values the test computes itself.

tests/test_quantized.py checks that fp8_mixed / int8 / nvfp4 / GGUF Q8_0 text encoders stay near the bf16
encoder (relative L2 bounds 2-4× the measured error). Here the features are pinned exactly: they equal
those of a plain Qwen3 encoder whose weights are the file's own values dequantised by the test from the
file's bytes (fp8: the float8 value × its float32 scale; Q8_0: per block of 32, the fp16 scale × the int8
value, the product in fp16 as ggml, diffusers and ComfyUI-GGUF take it), in bf16, the compute dtype the pack
chooses for a quantised file. Same values, same bf16 ops: tolerance 1e-5 of the features' scale. A wrong
scale, a transposed block or a row mix-up moves them by percents.
"""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders import demo_quantized as dq
from zimage_pack.loaders.gguf_files import llama_cpp_to_transformers
from zimage_pack.loaders.quantized import quantized_layers
from zimage_pack.loaders.text_encoder import encode_prompts, load_text_encoder

PROMPTS = ["a red fox in snow, 35mm photo", "two cats"]


def _fp8_mixed_values(path: str) -> dict[str, torch.Tensor]:
    out = {}
    with safe_open(path, "pt") as handle:
        keys = set(handle.keys())
        for key in keys:
            name = key.removeprefix("model.")
            if key.endswith(".weight") and f"{key[:-len('.weight')]}.weight_scale" in keys:
                out[name] = handle.get_tensor(key).float() * handle.get_tensor(f"{key[:-len('.weight')]}.weight_scale").float()
            elif not key.endswith((".weight_scale", ".comfy_quant")):
                out[name] = handle.get_tensor(key)
    return out


def _q8_0_values(path: str) -> dict[str, torch.Tensor]:
    import gguf

    out = {}
    for tensor in gguf.GGUFReader(path).tensors:
        name = llama_cpp_to_transformers(tensor.name)
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        if tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            blocks = np.asarray(tensor.data).reshape(-1, 34)  # 2 bytes fp16 scale, 32 int8
            d = blocks[:, :2].copy().view(np.float16)
            q = blocks[:, 2:].copy().view(np.int8).astype(np.float16)
            out[name] = torch.from_numpy(d * q).reshape(shape)
        else:
            out[name] = torch.from_numpy(np.asarray(tensor.data).copy()).reshape(shape)
    return out


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory, tiny_text_encoder):
    root = tmp_path_factory.mktemp("known_values")
    return {"fp8_mixed": dq.write_quantized_text_encoder(tiny_text_encoder, str(root / "qwen_3_4b_fp8_mixed.safetensors"), "float8_e4m3fn"),
            "gguf_q8_0": dq.write_gguf_text_encoder(tiny_text_encoder, str(root / "Qwen3-4B-Q8_0.gguf"), "Q8_0"), "root": root}


@pytest.mark.parametrize("fmt", ["fp8_mixed", "gguf_q8_0"])
def test_quantised_text_encoder_features_equal_the_files_dequantised_values(encoder_files, tokenizer_dir, tiny_text_encoder, fmt):
    path = encoder_files[fmt]
    encoder = load_text_encoder(path, tokenizer_dir)
    assert encoder.compute_dtype == torch.bfloat16 and quantized_layers(encoder.model)
    values = _fp8_mixed_values(path) if fmt == "fp8_mixed" else _q8_0_values(path)
    assert set(values) == set(tiny_text_encoder.state_dict())
    twin = dm.make_text_encoder(seed=0).to(torch.bfloat16)
    twin.load_state_dict({k: v.to(torch.bfloat16) for k, v in values.items()}, strict=True)
    twin_path = dm.write_text_encoder(twin, str(encoder_files["root"] / f"twin_{fmt}.safetensors"))
    want = encode_prompts(load_text_encoder(twin_path, tokenizer_dir), PROMPTS)
    got = encode_prompts(encoder, PROMPTS)
    for g, w in zip(got, want):
        assert g.shape == w.shape and (g.float() - w.float()).abs().max() <= 1e-5 * w.float().abs().max()
    # the quantisation is seen: the unquantised encoder's features are percents away
    plain = encode_prompts(load_text_encoder(dm.write_text_encoder(tiny_text_encoder, str(encoder_files["root"] / "plain.safetensors")), tokenizer_dir, "bf16"), PROMPTS)
    assert max(float((p.float() - w.float()).norm() / w.float().norm()) for p, w in zip(plain, want)) > 1e-3


def test_an_fp32_transformer_held_in_fp8_is_rounded_once(model_files):
    """weight_dtype fp8 on a float32 file: each Linear weight is the file's value rounded to fp8 once
    (through bf16 first, a few percent of the values would land one fp8 step off)."""
    from safetensors.torch import load_file

    from zimage_pack.loaders.transformer import load_transformer

    loaded = load_transformer(model_files["diffusers_single"], weight_dtype="fp8_e4m3fn")
    original = load_file(model_files["diffusers_single"])
    weight = loaded.module.layers[0].feed_forward.w1.weight
    assert weight.dtype == torch.float8_e4m3fn and original["layers.0.feed_forward.w1.weight"].dtype == torch.float32
    assert torch.equal(weight.float(), original["layers.0.feed_forward.w1.weight"].to(torch.float8_e4m3fn).float())
