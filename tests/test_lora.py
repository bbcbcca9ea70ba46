"""LoRA formats, merge arithmetic, reversibility, reports and refusals."""

import os

import pytest
import torch
from safetensors.torch import save_file

from zimage_pack.loaders import demo_loras
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.lora_merge import merge_state, prepare_lora, sync_lora_stack
from zimage_pack.loaders.transformer import load_transformer


@pytest.fixture()
def model(model_files):
    return load_transformer(model_files["comfy"])


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("fmt", demo_loras.FORMATS)
def test_each_format_merges_its_formula(model, tmp_path, fmt):
    path = str(tmp_path / f"{fmt}.safetensors")
    expected = demo_loras.write_lora(model.module, path, fmt, seed=3)
    before = _weights(model.module)
    patch, report = prepare_lora(model.module, path, 0.7)
    assert report.not_applied == [] and len(report.applied) > 0
    sync_lora_stack(model.module, (patch,))
    after = model.module.state_dict()
    for name, delta in expected.items():
        assert torch.allclose(after[name], before[name] + 0.7 * delta, atol=1e-6, rtol=0), name
    untouched = set(before) - set(expected)
    assert all(torch.equal(after[n], before[n]) for n in untouched)
    assert len(expected) >= 16  # every attention / feed-forward / modulation weight of both layers


def test_fused_qkv_lora_lands_on_split_weights(model, tmp_path):
    expected = demo_loras.write_lora(model.module, str(tmp_path / "c.safetensors"), "comfy")
    assert {"layers.0.attention.to_q.weight", "layers.0.attention.to_k.weight", "layers.0.attention.to_v.weight"} <= set(expected)
    patch, report = prepare_lora(model.module, str(tmp_path / "c.safetensors"), 1.0)
    assert report.format == "ComfyUI native names" and not report.not_applied


def test_distillpatch_stacks_with_a_user_lora(model, tmp_path):
    user = demo_loras.write_lora(model.module, str(tmp_path / "style.safetensors"), "ai-toolkit", seed=1)
    distill = demo_loras.write_lora(model.module, str(tmp_path / "Z-Image-Turbo-DistillPatch.safetensors"), "diffsynth", seed=2)
    before = _weights(model.module)
    p1, _ = prepare_lora(model.module, str(tmp_path / "style.safetensors"), 0.8)
    p2, r2 = prepare_lora(model.module, str(tmp_path / "Z-Image-Turbo-DistillPatch.safetensors"), 1.0)
    sync_lora_stack(model.module, (p1, p2))
    after = model.module.state_dict()
    name = "layers.1.feed_forward.w2.weight"
    assert torch.allclose(after[name], before[name] + 0.8 * user[name] + distill[name], atol=1e-6)
    assert r2.format == "DiffSynth-Studio (bare keys)"


def test_remove_restores_bit_exactly_and_changes_apply_only_new_patches(model, tmp_path):
    a = demo_loras.write_lora(model.module, str(tmp_path / "a.safetensors"), "ai-toolkit", seed=1)
    demo_loras.write_lora(model.module, str(tmp_path / "b.safetensors"), "musubi", seed=2)
    original = _weights(model.module)
    pa, _ = prepare_lora(model.module, str(tmp_path / "a.safetensors"), 1.0)
    pb, _ = prepare_lora(model.module, str(tmp_path / "b.safetensors"), 0.5)
    state = merge_state(model.module)
    sync_lora_stack(model.module, (pa,))
    written = state.weights_written
    assert written == len(a)
    sync_lora_stack(model.module, (pa,))  # same stack again: nothing happens
    assert state.weights_written == written
    sync_lora_stack(model.module, (pa, pb))  # one more LoRA: only its weights are written
    assert state.weights_written == written + len(a)
    sync_lora_stack(model.module, ())
    now = model.module.state_dict()
    assert all(torch.equal(now[k], original[k]) for k in original)
    assert state.originals == {}


def test_lora_on_fp8_weights_is_patched_in_float_and_stored_fp8(model_files, tmp_path):
    fp8 = load_transformer(model_files["fp8"])
    expected = demo_loras.write_lora(fp8.module, str(tmp_path / "a.safetensors"), "ai-toolkit")
    name = "layers.0.attention.to_q.weight"
    before = fp8.module.get_parameter(name).detach().clone()
    patch, _ = prepare_lora(fp8.module, str(tmp_path / "a.safetensors"), 1.0)
    sync_lora_stack(fp8.module, (patch,))
    after = fp8.module.get_parameter(name)
    assert after.dtype == torch.float8_e4m3fn
    assert torch.equal(after.float(), (before.float() + expected[name]).to(torch.float8_e4m3fn).float())
    sync_lora_stack(fp8.module, ())
    assert torch.equal(fp8.module.get_parameter(name).view(torch.uint8), before.view(torch.uint8))


def test_foreign_keys_are_listed_by_name(model, tmp_path):
    path = str(tmp_path / "mixed.safetensors")
    demo_loras.write_lora(model.module, path, "ai-toolkit")
    from safetensors.torch import load_file

    tensors = load_file(path)
    tensors["diffusion_model.layers.7.attention.to_q.lora_A.weight"] = torch.zeros(4, 64)  # no layer 7
    tensors["diffusion_model.layers.7.attention.to_q.lora_B.weight"] = torch.zeros(64, 4)
    tensors["diffusion_model.layers.0.attention.to_q.lora_magnitude_vector"] = torch.zeros(64)  # DoRA: not supported
    tensors["diffusion_model.layers.1.feed_forward.w1.lora_A.weight"] = torch.zeros(4, 99)  # wrong shape
    save_file(tensors, path)
    patch, report = prepare_lora(model.module, path, 1.0)
    reasons = dict(report.not_applied)
    assert reasons["diffusion_model.layers.7.attention.to_q.lora_A.weight"] == "no Z-Image layer of that name"
    assert reasons["diffusion_model.layers.0.attention.to_q.lora_magnitude_vector"] == "unrecognised tensor name"
    assert "shape" in reasons["diffusion_model.layers.1.feed_forward.w1.lora_A.weight"]
    text = report.text()
    assert "NOT applied (5)" in text and "layers.7.attention.to_q.lora_B.weight" in text


@pytest.mark.parametrize("keys,looks_like", [
    (["lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"], "SDXL"),
    (["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight", "transformer.transformer_blocks.0.attn.to_k.lora_B.weight"], "FLUX"),
])
def test_other_family_lora_is_refused(model, tmp_path, keys, looks_like):
    path = str(tmp_path / "other.safetensors")
    save_file({k: torch.zeros(4, 4) for k in keys}, path)
    before = _weights(model.module)
    with pytest.raises(ZImageInputError) as info:
        prepare_lora(model.module, path, 1.0)
    assert looks_like in str(info.value) and "other.safetensors" in str(info.value) and "How to fix" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.module.state_dict().items())


def test_corrupt_lora_fails_clearly_and_next_prompt_runs(model, tmp_path):
    path = str(tmp_path / "broken.safetensors")
    open(path, "wb").write(os.urandom(1000))
    with pytest.raises(ZImageInputError) as info:
        prepare_lora(model.module, path, 1.0)
    assert "broken.safetensors" in str(info.value)
    from zimage_pack.samplers.turbo import sample

    out = sample(model, [torch.randn(3, 32)], torch.zeros(1, 16, 4, 4), seed=0, steps=2)
    assert torch.isfinite(out).all()


def test_failed_merge_leaves_model_unpatched(model, tmp_path, monkeypatch):
    demo_loras.write_lora(model.module, str(tmp_path / "a.safetensors"), "ai-toolkit")
    before = _weights(model.module)
    patch, _ = prepare_lora(model.module, str(tmp_path / "a.safetensors"), 1.0)
    from zimage_pack.loaders import lora_merge

    calls = {"n": 0}
    real = lora_merge.lora_factors

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("out of memory (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(lora_merge, "lora_factors", failing)
    with pytest.raises(RuntimeError):
        sync_lora_stack(model.module, (patch,))
    assert all(torch.equal(v, before[k]) for k, v in model.module.state_dict().items())
    assert merge_state(model.module).applied == []


def test_merged_lora_sample_matches_diffusers_peft_unmerged(model_files, tiny_vae, tmp_path):
    """Our merged weights against diffusers + PEFT's unmerged adapter, through ZImagePipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from safetensors.torch import load_file

    from zimage_pack.samplers.latents import comfy_noise, to_raw_space
    from zimage_pack.samplers.turbo import sample

    ours, ref = load_transformer(model_files["comfy"]), load_transformer(model_files["comfy"])
    path = str(tmp_path / "peft.safetensors")
    demo_loras.write_lora(ours.module, path, "peft", rank=4, seed=11, blocks=("layers", "noise_refiner", "context_refiner"))
    patch, report = prepare_lora(ours.module, path, 0.8)
    assert not report.not_applied
    features = [torch.randn(6, 32, generator=torch.Generator().manual_seed(2))]
    latent = torch.zeros(1, 16, 8, 8)
    merged = sample(ours.with_lora(patch), features, latent, seed=4)

    ref.module.load_lora_adapter(load_file(path), prefix="transformer", adapter_name="style")
    ref.module.set_adapters(["style"], weights=[0.8])
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=tiny_vae, text_encoder=None, tokenizer=None, transformer=ref.module)
    unmerged = pipe(prompt_embeds=features, height=64, width=64, num_inference_steps=8, guidance_scale=0.0,
                    latents=comfy_noise(latent.shape, 4), output_type="latent").images
    err = (merged - to_raw_space(unmerged)).abs().max().item()
    assert err <= 1e-4, err
    without = sample(load_transformer(model_files["comfy"]), features, latent, seed=4)
    assert (merged - without).abs().max() > 1e-3  # the LoRA mattered


@pytest.mark.parametrize("rslora", [False, True])
def test_alpha_kept_in_diffusers_header_metadata_is_applied_as_diffusers_applies_it(model_files, tiny_vae, tmp_path, rslora):
    """diffusers' save_lora_weights keeps lora_alpha (and alpha_pattern) in the header, not as alpha
    tensors; its load_lora_weights reads them. Here alpha 12 on rank 4 (scale 3), one layer at alpha 2."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from zimage_pack.loaders.lora_merge import sync_lora_stack

    trained = load_transformer(model_files["comfy"]).module
    config = LoraConfig(r=4, lora_alpha=12, target_modules=["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"],
                        alpha_pattern={"layers.0.attention.to_q": 2}, use_rslora=rslora)
    trained.add_adapter(config)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    ZImagePipeline.save_lora_weights(str(tmp_path), transformer_lora_layers=get_peft_model_state_dict(trained),
                                     transformer_lora_adapter_metadata=config.to_dict())
    path = tmp_path / "pytorch_lora_weights.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        assert "lora_adapter_metadata" in handle.metadata() and not any(k.endswith(".alpha") for k in handle.keys())

    reference = load_transformer(model_files["comfy"]).module
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=tiny_vae, text_encoder=None, tokenizer=None, transformer=reference)
    pipe.load_lora_weights(str(path), adapter_name="style")
    pipe.fuse_lora(lora_scale=0.8)
    expected = {k.replace("base_layer.", ""): v for k, v in reference.state_dict().items() if "lora_" not in k}

    ours = load_transformer(model_files["comfy"])
    patch, report = prepare_lora(ours.module, str(path), 0.8)
    assert not report.not_applied
    sync_lora_stack(ours.module, (patch,))
    got = ours.module.state_dict()
    worst = max((got[k] - expected[k]).abs().max().item() for k in got)
    assert worst <= 1e-5, worst
    base = load_transformer(model_files["comfy"]).module.state_dict()
    assert (got["layers.1.attention.to_q.weight"] - base["layers.1.attention.to_q.weight"]).abs().max() > 1e-3


def test_a_dora_lora_is_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "dora.safetensors"
    save_file({"transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 64), "transformer.layers.0.attention.to_q.lora_B.weight": torch.zeros(64, 4)},
              str(path), metadata={"lora_adapter_metadata": '{"transformer.r": 4, "transformer.lora_alpha": 4, "transformer.use_dora": true}'})
    from zimage_pack.loaders.lora_files import read_lora

    with pytest.raises(ZImageInputError, match="a DoRA LoRA"):
        read_lora(str(path))
