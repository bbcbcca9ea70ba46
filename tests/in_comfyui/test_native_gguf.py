"""GGUF files as ComfyUI's own MODEL and CLIP held quantised (nodes/native_gguf.py), against native ComfyUI loading
the same weights.

The files: a thin real-width Z-Image (conftest's THIN, seeded, in bf16 as published checkpoints are) and a thin
Qwen3-4B (hidden 2560, 3 layers: Z-Image reads the second-to-last, a 4096-token vocabulary), written with the ``gguf`` package's writer exactly as
ComfyUI-GGUF's / llama.cpp's files are (``lumina2`` with ComfyUI names, or ``qwen3`` with llama.cpp names; Q8_0 2-D
weights, F32 norms and biases; a second transformer export with 1-D pad tokens).

Two references, neither built from the pack's GGUF code:
- "dequantised": the GGUF read with ``gguf.GGUFReader`` and dequantised by ``gguf.quants.dequantize``, stored as a
  float32 single file in ComfyUI's layout and loaded by ComfyUI itself (``comfy.sd.load_diffusion_model``: UNETLoader;
  ``comfy.sd.load_text_encoder_state_dicts``: CLIPLoader's loader). Both sides then hold the same weights: every Q8_0
  code × its f16 scale is exact in float32 (8 + 11 significant bits), the pack's dequantiser equals gguf's bit for bit
  (checked), and ComfyUI computes on CPU in float32 on both sides. So the bound is float32 arithmetic order:
  ``EXACT`` = 1e-6 relative (measured: 0, bit-equal), for model calls, a full sample and LoRA on both.
- "original": the bf16 weights that were quantised, as the bf16 single file UNETLoader reads. Here the difference is
  Q8_0's own error: ``Q8_0_BOUND`` = 2 × EPS with EPS = 4.5 / 254 the worst relative L2 error of a Q8_0 weight (half
  a step of peak/127 per block of 32, peak ≤ 4.5 × the block's RMS), the factor 2 covering this random network's gain
  (3.8–4.9 × the weights' RMS error, itself ¼–½ of EPS): tests/test_quantized.py derives and measures it.
Every comparison also checks that what it compares moves by far more than its bound (a LoRA skipped, or a model that
ignores its input, would fail).
"""

import gc
import os
import shutil

import comfy.lora
import comfy.model_management
import comfy.sd
import comfy.utils
import numpy as np
import pytest
import torch
from conftest import THIN
from safetensors.torch import load_file, save_file
from zimage_pack.loaders import demo_loras
from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders import demo_quantized as dq
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.gguf_files import llama_cpp_to_transformers
from zimage_pack.nodes import native_gguf
from zimage_pack.nodes.native_lora import add_lora
from zimage_pack.nodes.native_sampling import sample_turbo

EXACT = 1e-6
Q8_0_BOUND = 2 * 4.5 / 254
LATENT = torch.zeros(1, 16, 8, 8)  # 64×64 pixels
CPU = torch.device("cpu")
STRENGTH = 0.8
THIN_QWEN = {"hidden_size": 2560, "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}
QWEN_VOCAB = 4096


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _features(seed, tokens=6):
    return torch.randn(tokens, THIN["cap_feat_dim"], generator=torch.Generator().manual_seed(seed))


def _gguf_dequantised(gguf_path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF as the gguf package itself reads and dequantises it (float32), by its name in the file."""
    import gguf

    state = {}
    for tensor in gguf.GGUFReader(gguf_path).tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        state[tensor.name] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    try:
        yield _write_files(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # 7.5 GB: pytest keeps its last three temporary folders


def _write_files(root):
    module = dm.make_transformer(seed=3, **THIN).to(torch.bfloat16)
    paths = {"q8": dq.write_gguf_transformer(module, str(root / "z_image_thin-Q8_0.gguf"), "Q8_0"),
             "q8_1d": dq.write_gguf_transformer(module, str(root / "z_image_thin-Q8_0-1d.gguf"), "Q8_0", one_d_pad_tokens=True),
             "original": dm.write_transformer(module, str(root / "z_image_thin_bf16.safetensors"), "comfy")}
    for fmt in ("comfy", "ai-toolkit"):
        paths[fmt] = str(root / f"lora_{fmt}.safetensors")
        demo_loras.write_lora(module, paths[fmt], fmt, rank=4, seed=1)
    del module
    paths["reference"] = str(root / "z_image_thin_dequantised_fp32.safetensors")
    save_file(_gguf_dequantised(paths["q8"]), paths["reference"])
    gc.collect()
    qwen = dm.make_text_encoder(seed=4, **THIN_QWEN)
    qwen.embed_tokens = torch.nn.Embedding.from_pretrained(qwen.embed_tokens.weight[:QWEN_VOCAB].clone())
    paths["te_q8"] = dq.write_gguf_text_encoder(qwen, str(root / "Qwen3-4B-thin-Q8_0.gguf"), "Q8_0")
    paths["te_original"] = dm.write_text_encoder(qwen, str(root / "qwen_3_4b_thin.safetensors"))
    return paths


@pytest.fixture(scope="module")
def gguf_model(files):
    return native_gguf.load_gguf_transformer(files["q8"])


@pytest.fixture(scope="module")
def reference(files):
    return comfy.sd.load_diffusion_model(files["reference"])


_CALLS = {}


def _call(patcher, features_seed, mode="full", cache=None):
    """One model call (denoised x0 at σ 0.6, seeded input), the MODEL loaded by its patcher: fully ("full"), in
    ComfyUI's lowvram mode (every module cast per call, patches as LowVramPatch weight functions), or fully and then
    partially unloaded by ComfyUI's memory manager (which adds LowVramPatch functions to modules whose patches the
    GGUF patcher had already handed to the op: they must apply once)."""
    if cache is not None and (cache, features_seed) in _CALLS:
        return _CALLS[cache, features_seed]
    comfy.model_management.unload_all_models()
    features = _features(features_seed)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5))
    patcher.patch_model(device_to=CPU, lowvram_model_memory=1 if mode == "lowvram" else 0)
    if mode == "partially_unloaded":
        patcher.partially_unload(CPU, memory_to_free=1e30)
    try:
        with torch.no_grad():
            out = patcher.model.apply_model(x, torch.tensor([0.6]), c_crossattn=features[None], num_tokens=features.shape[0]).float()
    finally:
        patcher.unpatch_model(device_to=CPU)
    if cache is not None:
        _CALLS[cache, features_seed] = out
    return out


def _sample(patcher, features_seed, steps=2):
    comfy.model_management.unload_all_models()
    latent = {"samples": LATENT.clone()}
    return sample_turbo(patcher, [[_features(features_seed)[None], {}]], None, latent, seed=11, steps=steps, disable_pbar=True)["samples"]


def test_weights_stay_quantised(files, gguf_model):
    """Every Linear holds its GGUF blocks (ComfyUI's QuantizedTensor over the file's bytes), dequantising bit for bit
    to what the gguf package makes of them; the MODEL's bytes, as ComfyUI counts them, are the file's: 34 bytes per
    32 weights, 53 % of the same model in bf16."""
    import gguf

    net = gguf_model.model.diffusion_model
    linears = [m for m in net.modules() if isinstance(m, native_gguf.GGUFOps.Linear)]
    assert linears and all(native_gguf.is_gguf(m.weight) and m.weight._qdata.dtype == torch.uint8 for m in linears)
    file_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(files["q8"]).tensors)
    bf16_bytes = 2 * sum(p.numel() for p in gguf_model.model.parameters())  # the same model in bf16
    held = native_gguf.stored_bytes(gguf_model)
    print(f"held {held / 2**20:.0f} MiB; file {file_bytes / 2**20:.0f} MiB; bf16 {bf16_bytes / 2**20:.0f} MiB")
    assert abs(held - file_bytes) <= 0.001 * file_bytes and abs(gguf_model.model_size() - file_bytes) <= 0.001 * file_bytes
    assert held <= 0.54 * bf16_bytes
    reader = {t.name: t for t in gguf.GGUFReader(files["q8"]).tensors}
    for key in ("layers.0.attention.qkv.weight", "layers.0.feed_forward.w2.weight", "cap_embedder.1.weight"):
        want = torch.from_numpy(gguf.quants.dequantize(np.asarray(reader[key].data), reader[key].tensor_type))
        got = net.get_submodule(key[: -len(".weight")]).weight.to(torch.float32).dequantize()
        assert torch.equal(got, want), key


def test_comfyuis_gathered_casts_and_module_moves_keep_the_blocks(gguf_model):
    """What dynamic VRAM and offloading do with a layer's weights, run on CPU: ComfyUI sizes them by their blocks,
    gathers them into one byte buffer (a pinned or vbar one on a GPU) and reads them back as QuantizedTensors
    (``comfy.memory_management``), and moves modules with ``.to()``."""
    import comfy.memory_management

    layer = gguf_model.model.diffusion_model.layers[0].attention.qkv
    tensors = [layer.weight, layer.bias]
    size = comfy.memory_management.vram_aligned_size(tensors)
    assert layer.weight._qdata.nbytes <= size <= layer.weight._qdata.nbytes + 4096
    buffer = torch.zeros(size, dtype=torch.uint8)
    comfy.model_management.cast_to_gathered(tensors, buffer)
    weight, bias = comfy.memory_management.interpret_gathered_like(comfy.memory_management.tensors_to_geometries(tensors), buffer)
    assert native_gguf.is_gguf(weight) and bias is None and weight.data_ptr() == buffer.data_ptr()
    assert torch.equal(weight.dequantize(), layer.weight.dequantize())
    moved = native_gguf.GGUFOps.Linear(layer.in_features, layer.out_features, bias=False)
    moved.weight = torch.nn.Parameter(layer.weight, requires_grad=False)
    moved.to(torch.device("meta"))
    assert native_gguf.is_gguf(moved.weight) and moved.weight.device.type == "meta" and moved.weight._qdata.dtype == torch.uint8


def test_within_q8_0_error_of_the_original_bf16_model(files, gguf_model):
    original = comfy.sd.load_diffusion_model(files["original"])
    try:
        error = _rel(_call(gguf_model, 1, cache="gguf"), _call(original, 1))
    finally:
        del original
        gc.collect()
    print(f"against UNETLoader on the original bf16 file: {error:.2e} relative (bound {Q8_0_BOUND:.2e})")
    assert 100 * EXACT < error <= Q8_0_BOUND  # a Q8_0 model, not the original's weights, and within Q8_0's error


def test_one_model_call_and_a_sample_equal_unetloader_on_the_dequantised_file(gguf_model, reference):
    ours, theirs, other_input = _call(gguf_model, 1, cache="gguf"), _call(reference, 1, cache="ref"), _call(reference, 2)
    print(f"model call: {_rel(ours, theirs):.2e} relative (another caption moves it {_rel(other_input, theirs):.2e})")
    assert _rel(ours, theirs) <= EXACT < 100 * EXACT < _rel(other_input, theirs)
    ours, theirs = _sample(gguf_model, 1), _sample(reference, 1)
    print(f"2-step sample_turbo: {_rel(ours, theirs):.2e} relative")
    assert _rel(ours, theirs) <= EXACT


def test_one_d_pad_tokens_load_as_the_two_d_ones(files, gguf_model):
    one_d = native_gguf.load_gguf_transformer(files["q8_1d"])
    for name in ("x_pad_token", "cap_pad_token"):
        assert getattr(one_d.model.diffusion_model, name).shape == (1, THIN["dim"])
    theirs = dict(gguf_model.model.diffusion_model.named_parameters())
    for name, param in one_d.model.diffusion_model.named_parameters():
        assert type(param) is type(theirs[name]) and param.shape == theirs[name].shape, name
        assert torch.equal(param._qdata, theirs[name]._qdata) if native_gguf.is_gguf(param) else torch.equal(param, theirs[name]), name


def _native_lora(model, path):
    patched, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(path), STRENGTH, 0)
    return patched


def _pack_lora(model, path):
    patched, report = add_lora(model, path, STRENGTH)
    assert not report.not_applied, report.text()
    return patched


@pytest.mark.parametrize("loader, fmt, mode", [(_native_lora, "comfy", "full"), (_native_lora, "comfy", "lowvram"),
                                               (_native_lora, "comfy", "partially_unloaded"), (_pack_lora, "ai-toolkit", "full")],
                         ids=["native-LoraLoader", "native-LoraLoader-lowvram", "native-LoraLoader-partially-unloaded", "pack-add_lora"])
def test_lora_on_the_gguf_model_equals_the_lora_on_the_reference_model(files, gguf_model, reference, loader, fmt, mode):
    """The LoRA's patches reach every adapted GGUF layer and apply, once, to its dequantised weight at compute time:
    fully loaded (the patcher hands them to the op), in ComfyUI's lowvram mode (LowVramPatch weight functions), and
    after a partial unload; the stored blocks are never rewritten, and nothing stays on the base MODEL."""
    ours, theirs = loader(gguf_model, files[fmt]), loader(reference, files[fmt])
    keys = set(ours.patches)
    assert keys and keys == set(theirs.patches) and all(k.startswith("diffusion_model.") for k in keys)
    before = {k: comfy.utils.get_attr(ours.model, k)._qdata.clone() for k in sorted(keys)[:3]}
    unpatched, want = _call(reference, 1, cache="ref"), _call(theirs, 1)
    got = _call(ours, 1, mode=mode)
    print(f"{fmt} {mode}: {_rel(got, want):.2e} relative (the LoRA moves it {_rel(want, unpatched):.2e})")
    assert _rel(got, want) <= EXACT < 100 * EXACT < _rel(want, unpatched)
    for key, blocks in before.items():
        weight = comfy.utils.get_attr(ours.model, key)
        assert native_gguf.is_gguf(weight) and torch.equal(weight._qdata, blocks)
    assert not gguf_model.patches and not any(hasattr(m, "zimage_gguf_patches") for m in gguf_model.model.modules())


def test_saving_a_gguf_model_writes_its_weights_dequantised_with_patches(files, gguf_model):
    """What ModelSave / CheckpointSave read (``model_state_dict_for_saving``, cast lazily per weight): the GGUF weights
    dequantised (as gguf dequantises them) in bf16, a LoRA on the MODEL merged in, as ComfyUI merges it."""
    key = "layers.0.feed_forward.w2.weight"
    want = _gguf_dequantised(files["q8"])[key]
    saved = gguf_model.model_state_dict_for_saving(gguf_model.model.diffusion_model, "diffusion_model.")
    assert set(saved) == set(gguf_model.model.diffusion_model.state_dict())
    got = saved[key].to("cpu")
    assert got.dtype == torch.bfloat16 and torch.equal(got, want.to(torch.bfloat16))
    patched = _native_lora(gguf_model, files["comfy"])
    merged = comfy.lora.calculate_weight(patched.patches["diffusion_model." + key], want.clone(), key)
    assert (merged - want).abs().max() > 0.01 * want.abs().max()
    got = patched.model_state_dict_for_saving(patched.model.diffusion_model, "diffusion_model.")[key].to("cpu")
    assert torch.equal(got, merged.to(torch.bfloat16))


def test_broken_or_foreign_gguf_refused_naming_the_file(files, tmp_path):
    whole = dq.write_gguf({"layers.0.attention.qkv.weight": torch.randn(96, 64)}, str(tmp_path / "whole.gguf"), "lumina2", "Q8_0", lambda n: True)
    cut = tmp_path / "z_image_cut-Q8_0.gguf"
    with open(whole, "rb") as src:
        cut.write_bytes(src.read(os.path.getsize(whole) // 2))
    with pytest.raises(ZImageInputError, match="z_image_cut-Q8_0.gguf"):
        native_gguf.load_gguf_transformer(str(cut))
    with pytest.raises(ZImageInputError, match="Qwen3-4B-thin-Q8_0.gguf.*architecture 'qwen3'"):
        native_gguf.load_gguf_transformer(files["te_q8"])
    with pytest.raises(ZImageInputError, match="z_image_thin-Q8_0.gguf.*architecture 'lumina2'"):
        native_gguf.load_gguf_text_encoder(files["q8"])
    lumina = dq.write_gguf({"layers.0.attention.qkv.weight": torch.randn(96, 32)}, str(tmp_path / "other-lumina2.gguf"), "lumina2", "Q8_0", lambda n: True)
    with pytest.raises(ZImageInputError, match="other-lumina2.gguf"):
        native_gguf.load_gguf_transformer(lumina)
    not_gguf = tmp_path / "renamed.gguf"
    not_gguf.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ZImageInputError, match="renamed.gguf.*not a GGUF"):
        native_gguf.load_gguf_transformer(str(not_gguf))


# ------------------------------------------------------------------------------------------------- text encoder

def _encode(clip, ids):
    return clip.encode_from_tokens({"qwen3_4b": [[(i, 1.0) for i in ids]]}).float()


def test_text_encoder_state_dict_is_the_single_file_layout(files):
    """Read in the names and shapes of ComfyUI's qwen_3_4b.safetensors (what native CLIPLoader reads), the 2-D
    weights held as GGUF blocks dequantising to gguf's values, the rest as stored, within Q8_0 of the original."""
    ours = native_gguf.read_gguf_text_encoder_state_dict(files["te_q8"])
    single = load_file(files["te_original"])
    assert set(ours) == set(single) and all(tuple(ours[k].shape) == tuple(single[k].shape) for k in single)
    assert all(native_gguf.is_gguf(v) == (v.ndim == 2) for v in ours.values())
    by_name = _gguf_dequantised(files["te_q8"])
    for name in ("token_embd.weight", "blk.1.attn_q.weight", "blk.0.ffn_down.weight", "blk.0.attn_q_norm.weight"):
        key = "model." + llama_cpp_to_transformers(name)
        got = ours[key].to(torch.float32).dequantize() if native_gguf.is_gguf(ours[key]) else ours[key]
        assert torch.equal(got, by_name[name]), key
        assert _rel(got, single[key]) <= 4.5 / 254, key


def test_text_encoder_clip_equals_native_loading_of_the_dequantised_weights(files):
    """The CLIP from the GGUF (held quantised, type lumina2) against ComfyUI's own text-encoder loader on the same
    weights dequantised by gguf, laid out as qwen_3_4b.safetensors (ComfyUI's Qwen3-4B is built at these thin sizes
    from ``model_options["qwen3_4b_model_config"]``, which load_gguf_text_encoder reads from the shapes; a real file
    gives ComfyUI's defaults)."""
    clip = native_gguf.load_gguf_text_encoder(files["te_q8"])
    embed = clip.cond_stage_model.qwen3_4b.transformer.model.embed_tokens
    assert native_gguf.is_gguf(embed.weight)
    layers = clip.cond_stage_model.qwen3_4b.transformer.model.layers
    assert len(layers) == THIN_QWEN["num_hidden_layers"] and native_gguf.is_gguf(layers[0].self_attn.q_proj.weight)
    state = {"model." + llama_cpp_to_transformers(k): v for k, v in _gguf_dequantised(files["te_q8"]).items()}
    config = {"num_hidden_layers": THIN_QWEN["num_hidden_layers"], "intermediate_size": THIN_QWEN["intermediate_size"], "vocab_size": QWEN_VOCAB}
    native = comfy.sd.load_text_encoder_state_dicts([state], clip_type=comfy.sd.CLIPType.LUMINA2, model_options={"qwen3_4b_model_config": config})
    ids, other = [11, 4000, 27, 3, 900, 151], [12, 5, 3999, 8]
    ours, theirs = _encode(clip, ids), _encode(native, ids)
    print(f"text encoder: {_rel(ours, theirs):.2e} relative")
    assert ours.shape == theirs.shape == (1, len(ids), 2560)
    assert _rel(ours, theirs) <= EXACT < 100 * EXACT < _rel(_encode(native, other)[:, :4], theirs[:, :4])
