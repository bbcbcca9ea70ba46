"""Each bad input gets an error that names the input, what was found, what was expected and the fix,
and the next run in the same process still works."""

import os

import pytest
import torch
from safetensors.torch import save_file

from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.text_encoder import load_text_encoder
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.loaders.vae import load_vae
from zimage_pack.nodes.sampling_nodes import ZImageEmptyLatent, ZImageTurboSampler


@pytest.fixture(scope="module")
def good_run(model_files):
    """A small good sampler run; called after every failure to show nothing was left broken."""
    model = load_transformer(model_files["comfy"])
    cond = [[torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0)), {}]]
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    reference = ZImageTurboSampler().run(model, cond, latent, seed=1, steps=2)[0]["samples"]
    weights = {k: v.clone() for k, v in model.module.state_dict().items()}

    def check():
        again = ZImageTurboSampler().run(model, cond, latent, seed=1, steps=2)[0]["samples"]
        assert torch.equal(again, reference)
        assert all(torch.equal(v, weights[k]) for k, v in model.module.state_dict().items())

    return model, cond, latent, check


def _assert_clear(err: ZImageInputError, *fragments):
    text = str(err)
    assert "found" in text and "expected" in text and "How to fix" in text
    for fragment in fragments:
        assert fragment.lower() in text.lower(), f"{fragment!r} not in: {text}"


@pytest.mark.parametrize("other,looks_like", [("te_comfy", "text encoder"), ("vae_bfl", "VAE")])
def test_other_pack_files_given_as_transformer(model_files, good_run, other, looks_like):
    with pytest.raises(ZImageInputError) as info:
        load_transformer(model_files[other])
    _assert_clear(info.value, "Z-Image transformer", looks_like)
    good_run[3]()


def test_other_family_given_as_transformer(tmp_path, good_run):
    path = str(tmp_path / "flux1-dev.safetensors")
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4), "single_blocks.0.linear1.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(ZImageInputError) as info:
        load_transformer(path)
    _assert_clear(info.value, "flux1-dev.safetensors", "FLUX transformer")
    good_run[3]()


def test_transformer_given_as_text_encoder_and_vae(model_files, tokenizer_dir):
    with pytest.raises(ZImageInputError) as info:
        load_text_encoder(model_files["comfy"], tokenizer_dir)
    _assert_clear(info.value, "text encoder", "unknown model")
    with pytest.raises(ZImageInputError) as info:
        load_vae(model_files["te_comfy"])
    _assert_clear(info.value, "VAE", "text encoder")


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_file(model_files, tmp_path, good_run, cut):
    data = open(model_files["comfy"], "rb").read()
    path = str(tmp_path / "z_image_turbo_bf16.safetensors")
    open(path, "wb").write(data[: int(len(data) * cut)])
    with pytest.raises(ZImageInputError) as info:
        load_transformer(path)
    _assert_clear(info.value, "z_image_turbo_bf16.safetensors", "download")
    good_run[3]()


def test_corrupt_file(tmp_path, good_run):
    path = str(tmp_path / "corrupt.safetensors")
    open(path, "wb").write(os.urandom(4096))
    for loader in (load_transformer, load_vae):
        with pytest.raises(ZImageInputError) as info:
            loader(path)
        _assert_clear(info.value, "corrupt.safetensors")
    good_run[3]()


def test_missing_file(tmp_path, good_run):
    with pytest.raises(ZImageInputError) as info:
        load_transformer(str(tmp_path / "nope.safetensors"))
    _assert_clear(info.value, "nope.safetensors", "models folder")
    good_run[3]()


@pytest.mark.parametrize("width,height,bad", [(1000, 1024, "width"), (1024, 1030, "height")])
def test_size_not_multiple_of_16(width, height, bad, good_run):
    with pytest.raises(ZImageInputError) as info:
        ZImageEmptyLatent().generate(width, height, 1)
    _assert_clear(info.value, bad, "multiple of 16")
    good_run[3]()


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one(good_run, steps):
    model, cond, latent, check = good_run
    with pytest.raises(ZImageInputError) as info:
        ZImageTurboSampler().run(model, cond, latent, seed=1, steps=steps)
    _assert_clear(info.value, "steps", "≥ 1")
    check()


def test_latent_with_wrong_channel_count(good_run):
    model, cond, _, check = good_run
    with pytest.raises(ZImageInputError) as info:
        ZImageTurboSampler().run(model, cond, {"samples": torch.zeros(1, 4, 8, 8)}, seed=1, steps=2)
    _assert_clear(info.value, "latent_image", "4 channels", "16", "EmptySD3LatentImage")
    check()


def test_latent_with_odd_size(good_run):
    model, cond, _, check = good_run
    with pytest.raises(ZImageInputError) as info:
        ZImageTurboSampler().run(model, cond, {"samples": torch.zeros(1, 16, 5, 8)}, seed=1, steps=2)
    _assert_clear(info.value, "latent_image", "multiples of 16")
    check()


@pytest.mark.parametrize("size", [4096, 768])
def test_conditioning_with_wrong_feature_size(good_run, size):
    model, _, latent, check = good_run
    with pytest.raises(ZImageInputError) as info:
        ZImageTurboSampler().run(model, [[torch.zeros(1, 7, size), {}]], latent, seed=1, steps=2)
    _assert_clear(info.value, "positive", str(size), "Qwen3-4B")
    check()


def test_not_a_latent(good_run):
    model, cond, _, check = good_run
    with pytest.raises(ZImageInputError) as info:
        ZImageTurboSampler().run(model, cond, torch.zeros(1, 16, 4, 4), seed=1, steps=2)
    _assert_clear(info.value, "latent_image", "LATENT")
    check()


def test_bad_weight_dtype(model_files):
    with pytest.raises(ZImageInputError) as info:
        load_transformer(model_files["comfy"], "int4")
    _assert_clear(info.value, "weight_dtype", "int4")


def test_folder_without_config(tmp_path):
    with pytest.raises(ZImageInputError) as info:
        load_transformer(str(tmp_path))
    _assert_clear(info.value, "config.json")


@pytest.mark.parametrize("name,found", [
    ("", "empty"), ("   ", "empty"), ("bundles/", "path"), ("../../evil", "path"), ("a\\b", "path"), (".", "path"),
    (".hidden", "hidden"), ("x" * 300, "bytes"), ("bad\x00name", "characters"), ("what?", "characters"), ("tab\tname", "characters"),
])
def test_save_bundle_names_are_checked(name, found):
    from zimage_pack.loaders.file_names import clean_file_name

    with pytest.raises(ZImageInputError) as err:
        clean_file_name(name, ".safetensors")
    assert "filename" in str(err.value) and found in str(err.value)


def test_save_bundle_never_overwrites_silently(standalone_models, tiny_transformer, tmp_path):
    from zimage_pack.loaders.transformer import load_transformer
    from zimage_pack.nodes.two_step_nodes import ZImageSaveStepBundle
    from zimage_pack.loaders.step_decoupled import from_models

    model = load_transformer(standalone_models["comfy"])
    steps = from_models(model, model)
    node = ZImageSaveStepBundle()
    first = node.save(steps, "my_bundle.safetensors")["result"][0]
    second = node.save(steps, "my_bundle")["result"][0]
    assert first.endswith("my_bundle.safetensors") and second.endswith("my_bundle_00001.safetensors")
    before = os.path.getmtime(first)
    third = node.save(steps, "my_bundle", overwrite=True)["result"][0]
    assert third == first and os.path.getmtime(first) >= before
    for path in (first, second):
        os.remove(path)


def test_width_and_height_are_named_each_on_their_own():
    """ComfyUI shows the one VALIDATE_INPUTS text under both inputs: it says which one is wrong."""
    message = ZImageEmptyLatent.VALIDATE_INPUTS(100, 1024)
    assert message.startswith("width: found 100") and "height 1024 is fine" in message and "use 96" in message
    message = ZImageEmptyLatent.VALIDATE_INPUTS(1024, 20000)
    assert message.startswith("height: found 20000") and "width 1024 is fine" in message
    assert ZImageEmptyLatent.VALIDATE_INPUTS(1024, 768) is True


@pytest.mark.parametrize("kind", ["loop", "broken"])
def test_symlink_loop_or_broken_link_is_named_as_such(standalone_models, kind):
    from zimage_pack.nodes import comfy_services

    folder = os.path.join(standalone_models["root"], "diffusion_models")
    link = os.path.join(folder, f"{kind}.safetensors")
    os.symlink(link if kind == "loop" else os.path.join(folder, "gone.safetensors"), link)
    try:
        assert f"{kind}.safetensors" in comfy_services.list_models("diffusion_models")
        with pytest.raises(ZImageInputError) as err:
            comfy_services.model_path("diffusion_models", f"{kind}.safetensors")
        assert ("symlink loop" if kind == "loop" else "broken link") in str(err.value)
    finally:
        os.remove(link)


def test_only_minus_one_means_default_controlnet_strength():
    from zimage_pack.nodes.control_nodes import ZImageControlNetApply

    assert ZImageControlNetApply.VALIDATE_INPUTS(-1.0) is True
    assert ZImageControlNetApply.VALIDATE_INPUTS(0.0) is True and ZImageControlNetApply.VALIDATE_INPUTS(0.8) is True
    message = ZImageControlNetApply.VALIDATE_INPUTS(-0.5)
    assert message is not True and "strength: found -0.5" in message
    with pytest.raises(ZImageInputError, match="strength"):
        ZImageControlNetApply().apply(None, None, None, strength=-0.5)


def test_cfg_without_a_negative_prompt_is_refused(model_files):
    model = load_transformer(model_files["comfy"])
    with pytest.raises(ZImageInputError) as err:
        ZImageTurboSampler().run(model, [[torch.randn(1, 4, 32), {}]], {"samples": torch.zeros(1, 16, 4, 4)}, seed=1, steps=2, cfg=4.0)
    assert "negative" in str(err.value) and "cfg 4.0" in str(err.value) and "empty text" in str(err.value)
