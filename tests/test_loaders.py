"""Every supported file layout loads to the same weights, with the config read from shapes."""

import pytest
import torch

from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders.text_encoder import PROMPT_TEMPLATE, encode_prompts, load_text_encoder, load_tokenizer, tokenize_prompt
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.loaders.vae import decode, encode, load_vae


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("layout", ["comfy", "comfy_prefixed", "comfy_short_prefix", "diffusers_single", "diffusers_folder"])
def test_transformer_layouts_load_identical_weights(model_files, tiny_transformer, layout):
    loaded = load_transformer(model_files[layout])
    assert _max_diff(loaded.module.state_dict(), tiny_transformer.state_dict()) == 0.0
    cfg = loaded.module.config
    for key, value in dm.TINY_TRANSFORMER.items():
        assert getattr(cfg, key) == value, key
    assert loaded.storage_dtype == torch.float32 and loaded.compute_dtype == torch.float32


def test_sharded_folder_really_is_sharded(model_files):
    import os

    files = os.listdir(model_files["diffusers_folder"])
    assert "diffusion_pytorch_model.safetensors.index.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 1


def test_fp8_file_stays_fp8_and_computes_in_bf16(model_files, tiny_transformer):
    loaded = load_transformer(model_files["fp8"])
    module = loaded.module
    assert loaded.storage_dtype == torch.float8_e4m3fn and loaded.compute_dtype == torch.bfloat16
    assert module.layers[0].attention.to_q.weight.dtype == torch.float8_e4m3fn
    assert module.layers[0].feed_forward.w1.weight.dtype == torch.float8_e4m3fn
    # precision-critical parts in the compute dtype
    assert module.cap_embedder[1].weight.dtype == torch.bfloat16
    assert module.x_pad_token.dtype == torch.bfloat16
    expected = tiny_transformer.layers[0].attention.to_q.weight.to(torch.float8_e4m3fn).float()
    assert torch.equal(module.layers[0].attention.to_q.weight.float(), expected)
    out = module([torch.randn(16, 1, 4, 4).bfloat16()], torch.tensor([0.5]), [torch.randn(3, 32).bfloat16()], return_dict=False)[0][0]
    assert torch.isfinite(out.float()).all()


def test_scaled_fp8_stays_fp8_with_its_scale(model_files, tiny_transformer):
    loaded = load_transformer(model_files["fp8_scaled"])
    layer = loaded.module.layers[1].feed_forward.w2
    assert layer.stored_weight.dtype == torch.float8_e4m3fn and "float8_e4m3fn" in loaded.quantization
    got = layer.dequantized(torch.float32)
    want = tiny_transformer.layers[1].feed_forward.w2.weight
    assert (got - want).abs().max() <= 0.07 * want.abs().max()  # fp8 rounding, no scale error


@pytest.mark.parametrize("name,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32), ("fp8_e4m3fn", torch.float8_e4m3fn)])
def test_weight_dtype_choice(model_files, name, dtype):
    compute = "fp16" if dtype == torch.float16 else "auto"  # auto would compute an fp16 file in bf16 here (the CPU has bf16)
    loaded = load_transformer(model_files["bf16"], name, compute)
    assert loaded.module.layers[0].attention.to_v.weight.dtype == dtype
    assert loaded.storage_dtype == dtype


def test_bf16_file_default_keeps_bf16(model_files):
    assert load_transformer(model_files["bf16"]).module.layers[0].attention.to_k.weight.dtype == torch.bfloat16


def test_tokenizer_uses_design_template(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    ids = tokenize_prompt(tok, "a cat").tolist()
    assert ids[0] == 151644 and ids[-3:] == [151644, 77091, 198]  # <|im_start|> ... <|im_start|>assistant\n
    assert tok.decode(ids) == PROMPT_TEMPLATE.format("a cat")
    assert "system" not in tok.decode(ids)  # no default system prompt
    assert len(tokenize_prompt(tok, "word " * 2000)) == 512


@pytest.mark.parametrize("layout", ["te_comfy", "te_folder"])
def test_text_encoder_features(model_files, tiny_text_encoder, tokenizer_dir, layout):
    encoder = load_text_encoder(model_files[layout], tokenizer_dir)
    assert _max_diff(encoder.model.state_dict(), tiny_text_encoder.state_dict()) == 0.0
    (features,) = encode_prompts(encoder, ["a red fox in snow"])
    ids = tokenize_prompt(encoder.tokenizer, "a red fox in snow")[None]
    ref = tiny_text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-2][0]
    assert features.shape == (ids.shape[1], 32)
    assert torch.allclose(features, ref, atol=1e-5)


def test_padded_batch_features_equal_unpadded(model_files, tokenizer_dir):
    """The diffusers pipeline pads to 512 and keeps the valid tokens: same features as ours."""
    encoder = load_text_encoder(model_files["te_comfy"], tokenizer_dir)
    prompt = "two words"
    (ours,) = encode_prompts(encoder, [prompt])
    ids = tokenize_prompt(encoder.tokenizer, prompt)
    padded = torch.full((1, 40), 151643)
    padded[0, : len(ids)] = ids
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, : len(ids)] = True
    ref = encoder.model(input_ids=padded, attention_mask=mask, output_hidden_states=True).hidden_states[-2][0][mask[0]]
    assert torch.allclose(ours, ref, atol=1e-5)


def test_empty_prompt_encodes(model_files, tokenizer_dir):
    encoder = load_text_encoder(model_files["te_comfy"], tokenizer_dir)
    (features,) = encode_prompts(encoder, [""])
    assert features.shape[0] == len(tokenize_prompt(encoder.tokenizer, "")) > 0


@pytest.mark.parametrize("layout", ["vae_bfl", "vae_folder"])
def test_vae_layouts_load_identical_weights(model_files, tiny_vae, layout):
    vae = load_vae(model_files[layout])
    assert _max_diff(vae.model.state_dict(), tiny_vae.state_dict()) == 0.0
    assert vae.model.config.scaling_factor == pytest.approx(0.3611) and vae.model.config.shift_factor == pytest.approx(0.1159)


def test_vae_encode_decode_round_trip(model_files, tiny_vae):
    vae = load_vae(model_files["vae_bfl"])
    image = torch.rand(2, 64, 48, 3, generator=torch.Generator().manual_seed(0))
    latent = encode(vae, image)
    assert latent.shape == (2, 16, 8, 6)
    ref_latent = tiny_vae.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    assert torch.allclose(latent, ref_latent, atol=1e-5)
    back = decode(vae, latent)
    assert back.shape == image.shape and back.min() >= 0 and back.max() <= 1
    ref_image = ((tiny_vae.decode(ref_latent).sample.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert torch.allclose(back, ref_image, atol=1e-5)


def test_tiled_decode(model_files):
    vae = load_vae(model_files["vae_bfl"])
    latent = torch.randn(1, 16, 24, 24, generator=torch.Generator().manual_seed(1))
    calls = []
    original = vae.model.tiled_decode
    vae.model.tiled_decode = lambda *a, **k: calls.append(1) or original(*a, **k)
    tiled = decode(vae, latent, tile_size=64)
    assert calls, "tiling was not used"
    whole = decode(vae, latent)
    assert tiled.shape == whole.shape == (1, 192, 192, 3)
    assert (tiled - whole).abs().mean() < 0.1  # tiles blend into the same picture
