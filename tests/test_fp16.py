"""Cards without bf16: the compute dtype chosen from the device, fp16 that stays finite (clamped
as native ComfyUI clamps Z-Image), fp32 for the text encoder and VAE there, and a clear error
instead of a black picture when a step's output is not finite."""

import pytest
import torch

from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders.compute_dtype import choose, protect_fp16, unprotect_fp16
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.text_encoder import encode_prompts, load_text_encoder
from zimage_pack.loaders.transformer import ZImageTransformer, load_transformer, with_compute_dtype
from zimage_pack.loaders.vae import decode, load_vae
from zimage_pack.samplers.turbo import predict_velocity, sample

CUDA = torch.device("cuda", 0)


def fake_card(monkeypatch, capability, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)


@pytest.mark.parametrize("card,capability,bf16,transformer,others", [
    ("RTX 4090", (8, 9), True, torch.bfloat16, torch.bfloat16),
    ("T4 / RTX 2080 Ti", (7, 5), False, torch.float16, torch.float32),
    ("V100", (7, 0), False, torch.float16, torch.float32),
    ("P40", (6, 1), False, torch.float32, torch.float32),
])
def test_compute_dtype_from_the_device(monkeypatch, card, capability, bf16, transformer, others):
    fake_card(monkeypatch, capability, bf16)
    assert choose(torch.bfloat16, "auto", CUDA, "transformer") == transformer, card
    assert choose(torch.bfloat16, "auto", CUDA, "text_encoder") == others
    assert choose(torch.float16, "auto", CUDA, "vae") == others
    assert choose(torch.float32, "auto", CUDA, "transformer") == torch.float32  # an fp32 file stays fp32
    assert choose(torch.bfloat16, "fp32", CUDA) == torch.float32  # the input overrides
    if not bf16:
        with pytest.raises(ZImageInputError, match="no bf16"):
            choose(torch.bfloat16, "bf16", CUDA)


def _overflowing_transformer(scale=600.0):
    """Layer 0's feed-forward scaled so that its activations pass fp16's 65504 by a few percent, as
    Z-Image's do on real prompts; float32 is the reference."""
    model = dm.make_transformer(seed=0)
    with torch.no_grad():
        ff = model.layers[0].feed_forward
        ff.w1.weight.mul_(scale ** 0.5)
        ff.w3.weight.mul_(scale ** 0.5)
        ff.w2.weight.mul_(scale)
    return model


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 16, 8, 8, generator=g), [torch.randn(5, 32, generator=g)]


def test_fp16_overflows_without_protection_and_stays_close_to_fp32_with_it():
    x, feats = _inputs()
    fp32 = ZImageTransformer(_overflowing_transformer(), torch.float32, torch.float32, "fp32")
    want = predict_velocity(fp32, x, 0.7, feats, None)
    fp16 = with_compute_dtype(ZImageTransformer(_overflowing_transformer(), torch.float32, torch.float32, "fp16"), torch.float16)
    assert fp16.module.layers[0].attention.to_q.weight.dtype == torch.float16
    unprotect_fp16(fp16.module)
    assert not torch.isfinite(predict_velocity(fp16, x, 0.7, feats, None)).all()  # plain fp16: a black picture
    assert protect_fp16(fp16.module) == 4  # 2 layers + 1 noise refiner + 1 context refiner
    got = predict_velocity(fp16, x, 0.7, feats, None)
    assert torch.isfinite(got).all()
    # the clamp changes only the entries past 65504 (here a few percent past): 1.6 % measured, fp16's
    # own rounding alone is 0.16 %
    assert float((got - want).norm() / want.norm()) < 0.03


def test_a_non_finite_step_is_an_error_naming_the_step_and_dtype():
    x, feats = _inputs()
    fp16 = with_compute_dtype(ZImageTransformer(_overflowing_transformer(), torch.float32, torch.float32, "fp16"), torch.float16)
    unprotect_fp16(fp16.module)
    with pytest.raises(ZImageInputError) as err:
        sample(fp16, feats, torch.zeros(1, 16, 8, 8), seed=1, steps=4)
    message = str(err.value)
    assert "step 1 of 4" in message and "float16" in message and "compute_dtype" in message


def test_loader_picks_fp16_with_protection_on_a_card_without_bf16(monkeypatch, model_files):
    fake_card(monkeypatch, (7, 5), False)
    loaded = load_transformer(model_files["bf16"], device=CUDA)  # loaded on the CPU, as the loader does
    assert loaded.compute_dtype == torch.float16 and "fp16 overflow protection" in loaded.describe()
    assert loaded.module.__dict__.get("_zimage_fp16_guards")
    x, feats = _inputs()
    _assert_fp16_rounding_only(predict_velocity(loaded, x, 0.7, feats, None), predict_velocity(load_transformer(model_files["bf16"], compute_dtype="fp32"), x, 0.7, feats, None))


# fp16 keeps 11 significant bits (unit roundoff u = 2^-11 = 4.9e-4); on these tiny models its velocity is
# 0.14-0.15 % (3 u) from the same weights computed in fp32, bf16's (8 bits) 1.1-1.2 %. The bound, 10 u,
# holds fp16's rounding with room and fails for a bf16 computation or a clamp that bites.
FP16_BOUND = 10 * 2.0 ** -11


def _assert_fp16_rounding_only(got, want):
    assert torch.isfinite(got).all()
    assert float((got - want).norm() / want.norm()) < FP16_BOUND


def test_quantised_file_computes_in_the_chosen_dtype(monkeypatch, tmp_path, model_files):
    """A Comfy-Org fp8 file (quantised layers) and a plain fp8 file (diffusers' layerwise casting) on a card
    without bf16: fp16 compute from the fp8 weights, the velocity within fp16 rounding of the same file in fp32."""
    from zimage_pack.loaders import demo_quantized as dq
    from zimage_pack.loaders.quantized import quantized_layers

    fake_card(monkeypatch, (7, 5), False)
    x, feats = _inputs()
    path = dq.write_quantized_transformer(dm.make_transformer(seed=0), str(tmp_path / "fp8.safetensors"), "float8_e4m3fn")
    loaded = load_transformer(path, device=CUDA)
    assert loaded.compute_dtype == torch.float16
    assert all(layer.compute_dtype == torch.float16 and layer.stored_weight.dtype == torch.float8_e4m3fn for layer in quantized_layers(loaded.module).values())
    _assert_fp16_rounding_only(predict_velocity(loaded, x, 0.7, feats, None), predict_velocity(load_transformer(path, compute_dtype="fp32"), x, 0.7, feats, None))
    plain = load_transformer(model_files["fp8"], device=CUDA)  # fp8 storage chosen for bf16, moved to fp16
    assert plain.compute_dtype == torch.float16 and plain.module.layers[0].attention.to_q.weight.dtype == torch.float8_e4m3fn
    _assert_fp16_rounding_only(predict_velocity(plain, x, 0.7, feats, None), predict_velocity(load_transformer(model_files["fp8"], compute_dtype="fp32"), x, 0.7, feats, None))


def _overflowing_text_encoder():
    model = dm.make_text_encoder(seed=1)
    with torch.no_grad():
        for layer in model.layers:
            layer.mlp.down_proj.weight.mul_(3e4)  # Qwen3's massive activations, past fp16's range
    return model


def test_text_encoder_computes_in_fp32_without_bf16_and_refuses_a_non_finite_fp16(monkeypatch, tmp_path, tokenizer_dir):
    path = dm.write_text_encoder(_overflowing_text_encoder().to(torch.bfloat16), str(tmp_path / "qwen_3_4b.safetensors"))
    reference = load_text_encoder(path, tokenizer_dir, compute_dtype="fp32")
    want = encode_prompts(reference, ["a red fox"])[0]
    assert torch.isfinite(want).all() and want.abs().max() > 65504  # fp16 could not hold these
    fake_card(monkeypatch, (7, 5), False)
    auto = load_text_encoder(path, tokenizer_dir, device=CUDA)
    assert auto.compute_dtype == torch.float32
    assert auto.model.layers[1].mlp.down_proj.weight.dtype == torch.bfloat16  # stored as the file, upcast per layer
    assert torch.allclose(encode_prompts(auto, ["a red fox"])[0], want, rtol=1e-5, atol=1e-3)
    forced = load_text_encoder(path, tokenizer_dir, compute_dtype="fp16")
    with pytest.raises(ZImageInputError, match="text encoder output.*float16"):
        encode_prompts(forced, ["a red fox"])


def test_vae_computes_in_fp32_without_bf16(monkeypatch, tmp_path):
    model = dm.make_vae(seed=2)
    path = dm.write_vae(model.to(torch.float16), str(tmp_path / "ae.safetensors"))
    fake_card(monkeypatch, (7, 5), False)
    vae = load_vae(path, device=CUDA)
    assert vae.dtype == torch.float32 and vae.model.decoder.conv_in.weight.dtype == torch.float16
    latent = torch.randn(1, 16, 4, 4)
    got = decode(vae, latent)
    want = decode(load_vae(path, "fp32"), latent)
    assert torch.isfinite(got).all() and torch.allclose(got, want, atol=1e-5)
