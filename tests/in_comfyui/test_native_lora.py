"""LoRA of every trainer's format as ComfyUI weight patches on a native MODEL (comfy.sd's own Z-Image
model), against the pack's engine merge on the same weights; native LoraLoader for comparison."""

import pytest
import torch

import comfy.lora
import comfy.sd
import comfy.utils
import test_lora_trainer_formats as trainer_formats
from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders.lora_merge import merge_state, prepare_lora, sync_lora_stack
from zimage_pack.nodes.native_lora import add_lora

STRENGTH = 0.8


def _patched_weights(model, keys):
    """Those weights of the MODEL with its patches applied by ComfyUI."""
    model.patch_model(device_to=torch.device("cpu"), load_weights=True)
    try:
        state = model.model.diffusion_model.state_dict()
        return {k: state[k].detach().float().clone() for k in keys}
    finally:
        model.unpatch_model(device_to=torch.device("cpu"))


def _comfy_name(diffusers_param: str) -> str:
    """A diffusers weight name → the ComfyUI weight it lives in (q, k and v in the fused qkv)."""
    for part in ("to_q", "to_k", "to_v"):
        diffusers_param = diffusers_param.replace(f"attention.{part}.", "attention.qkv.")
    return diffusers_param.replace("attention.to_out.0.", "attention.out.")


# at real width musubi's LoKr decomposes every w2 at rank 8; rank 64 keeps the attention ones full
THIN_CASES = {**trainer_formats.CASES, "musubi-lokr": lambda m: trainer_formats.musubi_lokr(m, rank=64),
              "musubi-lokr-comfy": lambda m: trainer_formats.musubi_lokr_comfy(m, rank=64),
              "musubi-lokr-header-only": lambda m: trainer_formats._without(trainer_formats.musubi_lokr(m, rank=64), "lokr_factor")}


@pytest.mark.parametrize("fmt", sorted(THIN_CASES))
def test_every_trainers_file_as_comfyui_patches_equals_the_engine_merge(native, engine, tmp_path, fmt):
    """Each trainer's file exactly as it saves it (tests/test_lora_trainer_formats.py), on UNETLoader's
    MODEL through the pack's LoRA patches, against the pack's engine merge on the same weights: the same
    weights patched, each equal. Both sides hold bf16 weights: the bound is two bf16 steps of the tensor's
    largest value (2 · 2^-8 · max|W|)."""
    path = THIN_CASES[fmt](engine.module).write(tmp_path / f"{fmt}.safetensors")
    patched, report = add_lora(native, path, STRENGTH)
    assert not report.not_applied, report.text()
    assert not native.patches  # the input MODEL is unchanged
    patch, engine_report = prepare_lora(engine.module, path, STRENGTH)
    assert len(report.applied) == len(engine_report.applied)
    sync_lora_stack(engine.module, (patch,))
    try:
        changed = {_comfy_name(k) for k in merge_state(engine.module).originals}
        assert {k[len("diffusion_model."):] for k in patched.patches} == changed
        want = dm.diffusers_to_comfy_transformer_keys(dict(engine.module.state_dict()))
        got = _patched_weights(patched, sorted(changed))
        for key in changed:
            bound = 2 * 2 ** -8 * want[key].float().abs().max().item()
            assert (got[key] - want[key].float()).abs().max().item() <= bound, key
    finally:
        sync_lora_stack(engine.module, ())


def test_native_loraloader_drops_musubis_attention_keys_and_ours_applies_them(native, engine, tmp_path):
    """musubi's raw names flatten diffusers' names (to_q, to_out_0); native LoraLoader maps only its own
    fused names there, so the attention keys are silently not loaded (the feed-forward names agree)."""
    path = trainer_formats.CASES["musubi-fp32"](engine.module).write(tmp_path / "musubi.safetensors")
    attention, feed_forward = "layers.0.attention.qkv.weight", "layers.0.feed_forward.w1.weight"
    before = _patched_weights(native, [attention, feed_forward])
    native_patched, _ = comfy.sd.load_lora_for_models(native, None, comfy.utils.load_torch_file(path), 1.0, 0)
    theirs = _patched_weights(native_patched, [attention, feed_forward])
    assert torch.equal(theirs[attention], before[attention]) and not torch.equal(theirs[feed_forward], before[feed_forward])
    ours, report = add_lora(native, path, 1.0)
    assert not report.not_applied and len(report.applied) == len(comfy.utils.load_torch_file(path))
    assert not torch.equal(_patched_weights(ours, [attention])[attention], before[attention])


def test_a_lora_on_an_fp8_model_is_applied_as_on_bf16(model_file, native, engine, tmp_path):
    """UNETLoader's weight_dtype fp8_e4m3fn: ComfyUI applies the patches to the fp8 weights itself. One
    sampling step with the LoRA on fp8 lands within fp8's rounding of the same step on bf16, and far
    nearer to it than the fp8 model without the LoRA."""
    from zimage_pack.nodes.native_sampling import sample_turbo

    fp8 = comfy.sd.load_diffusion_model(model_file, model_options={"dtype": torch.float8_e4m3fn})
    assert fp8.model.diffusion_model.layers[0].attention.qkv.weight.dtype == torch.float8_e4m3fn
    path = trainer_formats.CASES["ai-toolkit-bf16"](engine.module).write(tmp_path / "lora.safetensors")
    positive = [[torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(5)), {}]]

    def step(model):
        return sample_turbo(model, positive, None, {"samples": torch.zeros(1, 16, 8, 8)}, seed=3, steps=1, disable_pbar=True)["samples"]

    with_lora_bf16 = step(add_lora(native, path, 4.0)[0])
    with_lora_fp8 = step(add_lora(fp8, path, 4.0)[0])
    without_fp8 = step(fp8)
    err = (with_lora_fp8 - with_lora_bf16).abs().max().item()
    assert err < 0.25 * (without_fp8 - with_lora_bf16).abs().max().item(), err
    assert fp8.model.diffusion_model.layers[0].attention.qkv.weight.dtype == torch.float8_e4m3fn
