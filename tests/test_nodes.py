"""Node definitions and the node-level behaviour: batch, progress, previews, interruption, native conditioning."""

import types

import pytest
import torch

import zimage_pack
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.nodes import comfy_services as services
from zimage_pack.nodes.loader_nodes import ZImageTextEncoderLoader, ZImageTransformerLoader, ZImageVAELoader
from zimage_pack.nodes.sampling_nodes import ZImageEmptyLatent, ZImageTextEncode, ZImageTurboSampler
from zimage_pack.samplers.turbo import sample


def test_every_node_is_described():
    assert set(zimage_pack.NODE_CLASS_MAPPINGS) == set(zimage_pack.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in zimage_pack.NODE_CLASS_MAPPINGS.items():
        assert cls.DESCRIPTION and cls.CATEGORY.startswith("Z-Image") and cls.SEARCH_ALIASES, name
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES), name
        assert callable(getattr(cls, cls.FUNCTION)), name
        for section_name, section in cls.INPUT_TYPES().items():
            if section_name == "hidden":  # filled by ComfyUI (PROMPT, UNIQUE_ID…): no widget, no tooltip
                continue
            for input_name, spec in section.items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_loader_nodes_list_the_models_folders(standalone_models):
    names = ZImageTransformerLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert "z_image_tiny.safetensors" in names and "diffusers/z_image_tiny" in names
    assert "qwen_3_tiny.safetensors" in ZImageTextEncoderLoader.INPUT_TYPES()["required"]["text_encoder_name"][0]
    assert "ae_tiny.safetensors" in ZImageVAELoader.INPUT_TYPES()["required"]["vae_name"][0]


def test_diffusers_folder_through_the_nodes(standalone_models):
    """One diffusers folder gives all three models; its own tokenizer/ is used."""
    (model,) = ZImageTransformerLoader().load("diffusers/z_image_tiny")
    (encoder,) = ZImageTextEncoderLoader().load("diffusers/z_image_tiny")
    (vae,) = ZImageVAELoader().load("diffusers/z_image_tiny")
    (cond,) = ZImageTextEncode().encode(encoder, "hello")
    assert cond[0][0].shape[-1] == model.cap_feat_dim
    assert vae.model.config.latent_channels == 16


@pytest.fixture()
def pipeline_parts(standalone_models):
    (model,) = ZImageTransformerLoader().load("z_image_tiny.safetensors")
    (encoder,) = ZImageTextEncoderLoader().load("qwen_3_tiny.safetensors")
    return model, encoder


def test_batch_gives_distinct_images_with_one_prompt(pipeline_parts):
    model, encoder = pipeline_parts
    (cond,) = ZImageTextEncode().encode(encoder, "a lighthouse")
    (latent,) = ZImageEmptyLatent().generate(64, 32, 3)
    (out,) = ZImageTurboSampler().run(model, cond, latent, seed=3)
    samples = out["samples"]
    assert samples.shape == (3, 16, 4, 8)
    assert (samples[0] - samples[1]).abs().max() > 1e-3
    # image 1 of the batch is the same as running that image's noise alone
    single = sample(model, [cond[0][0][0]], torch.zeros(1, 16, 4, 8), seed=0, noise=torch.randn((3, 16, 4, 8), generator=torch.manual_seed(3))[1:2])
    assert torch.allclose(samples[1:2], single, atol=1e-5)


def test_native_clip_conditioning_with_attention_mask(pipeline_parts):
    """ComfyUI's CLIPTextEncode may pad and send an attention mask: only unmasked tokens count."""
    model, encoder = pipeline_parts
    (cond,) = ZImageTextEncode().encode(encoder, "a lighthouse")
    features = cond[0][0]
    padded = torch.cat([features, torch.full((1, 5, features.shape[-1]), 7.0)], dim=1)
    mask = torch.cat([torch.ones(1, features.shape[1]), torch.zeros(1, 5)], dim=1)
    (latent,) = ZImageEmptyLatent().generate(32, 32, 1)
    plain = ZImageTurboSampler().run(model, cond, latent, seed=5)[0]["samples"]
    native = ZImageTurboSampler().run(model, [[padded, {"attention_mask": mask, "pooled_output": None}]], latent, seed=5)[0]["samples"]
    assert torch.equal(plain, native)


def test_cfg_with_negative_changes_the_result_and_cfg_one_ignores_it(pipeline_parts):
    model, encoder = pipeline_parts
    (pos,) = ZImageTextEncode().encode(encoder, "a lighthouse")
    (neg,) = ZImageTextEncode().encode(encoder, "")
    (latent,) = ZImageEmptyLatent().generate(32, 32, 1)
    plain = ZImageTurboSampler().run(model, pos, latent, seed=5, steps=4)[0]["samples"]
    off = ZImageTurboSampler().run(model, pos, latent, seed=5, steps=4, negative=neg, cfg=1.0)[0]["samples"]
    on = ZImageTurboSampler().run(model, pos, latent, seed=5, steps=4, negative=neg, cfg=4.0)[0]["samples"]
    assert torch.equal(plain, off) and (plain - on).abs().max() > 1e-3


class _FakeBar:
    def __init__(self, total):
        self.total, self.updates = total, []

    def update_absolute(self, value, total, preview):
        self.updates.append((value, total, preview))


class _FakePreviewer:
    def decode_latent_to_preview_image(self, fmt, x0):
        return (fmt, tuple(x0.shape), 512)


@pytest.fixture()
def fake_comfyui(monkeypatch):
    """ComfyUI's runtime services, faked at the one module that touches them."""
    bars = []
    state = {"interrupt_after": None, "interrupt_at_check": None, "checks": 0, "freed": []}

    def progress_bar(total):
        bars.append(_FakeBar(total))
        return bars[-1]

    def interrupt():
        state["checks"] += 1
        steps_done = len(bars[-1].updates) if bars else 0
        if (state["interrupt_after"] is not None and steps_done >= state["interrupt_after"]) or state["checks"] == state["interrupt_at_check"]:
            raise KeyboardInterrupt("Processing interrupted")  # ComfyUI raises a BaseException

    mm = types.SimpleNamespace(get_torch_device=lambda: torch.device("cpu"), free_memory=lambda b, d: state["freed"].append(b),
                               throw_exception_if_processing_interrupted=interrupt)
    monkeypatch.setattr(services, "IN_COMFYUI", True)
    monkeypatch.setattr(services, "_mm", mm)
    monkeypatch.setattr(services, "_comfy_utils", types.SimpleNamespace(ProgressBar=progress_bar))
    monkeypatch.setattr(services, "_previewer", lambda device: _FakePreviewer())
    return bars, state


def test_progress_and_previews_each_step(model_files, fake_comfyui):
    bars, _ = fake_comfyui
    model = load_transformer(model_files["comfy"])
    cond = [[torch.randn(1, 4, 32), {}]]
    ZImageTurboSampler().run(model, cond, {"samples": torch.zeros(2, 16, 4, 6)}, seed=1, steps=5)
    (bar,) = bars
    assert bar.total == 5
    assert [u[0] for u in bar.updates] == [1, 2, 3, 4, 5]
    assert all(u[2] == ("JPEG", (2, 16, 4, 6), 512) for u in bar.updates)


def test_interrupt_between_steps_then_next_run_works(model_files, fake_comfyui):
    bars, state = fake_comfyui
    model = load_transformer(model_files["comfy"])
    cond = [[torch.randn(1, 4, 32), {}]]
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    state["interrupt_after"] = 3
    with pytest.raises(KeyboardInterrupt):
        ZImageTurboSampler().run(model, cond, latent, seed=1, steps=8)
    assert len(bars[-1].updates) == 3  # stopped after step 3
    state["interrupt_after"] = None
    out = ZImageTurboSampler().run(model, cond, latent, seed=1, steps=8)[0]["samples"]
    assert torch.equal(out, sample(model, [cond[0][0][0]], latent["samples"], seed=1))


def test_interrupt_inside_a_step_between_transformer_blocks(model_files, fake_comfyui):
    """A long single step (a large image on a CPU) stops at the next block, and leaves no hook behind."""
    bars, state = fake_comfyui
    model = load_transformer(model_files["comfy"])
    cond = [[torch.randn(1, 4, 32), {}]]
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    state["interrupt_at_check"] = 3  # the step check, then two block checks inside the first transformer call
    with pytest.raises(KeyboardInterrupt):
        ZImageTurboSampler().run(model, cond, latent, seed=1, steps=1)
    assert bars[-1].updates == []  # stopped inside step 1
    assert all(not block._forward_pre_hooks for block in model.module.modules() if type(block).__name__ == "ZImageTransformerBlock")
    state["interrupt_at_check"] = None
    out = ZImageTurboSampler().run(model, cond, latent, seed=1, steps=1)[0]["samples"]
    assert torch.equal(out, sample(model, [cond[0][0][0]], latent["samples"], seed=1, steps=1))


def test_no_device_is_hard_coded(model_files, fake_comfyui, monkeypatch):
    """The compute device comes from ComfyUI (or the standalone picker), never a literal."""
    asked = []
    monkeypatch.setattr(services._mm, "get_torch_device", lambda: asked.append(1) or torch.device("cpu"))
    model = load_transformer(model_files["comfy"])
    ZImageTurboSampler().run(model, [[torch.randn(1, 4, 32), {}]], {"samples": torch.zeros(1, 16, 4, 4)}, seed=1, steps=1)
    assert asked


def test_inside_comfyui_the_bundled_tokenizer_is_used(fake_comfyui, monkeypatch, tmp_path, tokenizer_dir):
    """ComfyUI ships the tokenizer at comfy/text_encoders/qwen25_tokenizer, beside model_management.py."""
    import shutil

    bundled = tmp_path / "comfy" / "text_encoders" / "qwen25_tokenizer"
    shutil.copytree(tokenizer_dir, bundled)
    monkeypatch.setattr(services._mm, "__file__", str(tmp_path / "comfy" / "model_management.py"), raising=False)
    assert services.bundled_tokenizer_dir() == str(bundled)


def test_loaders_list_gguf_files(standalone_models):
    import os

    from zimage_pack.nodes import comfy_services

    folder = os.path.join(standalone_models["root"], "diffusion_models")
    open(os.path.join(folder, "z_image_turbo-Q4_K_M.gguf"), "wb").write(b"GGUF")
    try:
        assert "z_image_turbo-Q4_K_M.gguf" in comfy_services.list_models("diffusion_models")
    finally:
        os.remove(os.path.join(folder, "z_image_turbo-Q4_K_M.gguf"))
