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
from zimage_pack.samplers.turbo import sample


@pytest.fixture(scope="module")
def good_run(model_files):
    """A small good sampler run (the engine's); called after every failure to show nothing was left broken.
    The nodes' own bad-input cases run in ComfyUI: tests/in_comfyui/test_nodes.py."""
    model = load_transformer(model_files["comfy"])
    cond = [torch.randn(5, 32, generator=torch.Generator().manual_seed(0))]
    latent = torch.zeros(1, 16, 4, 4)
    reference = sample(model, cond, latent, seed=1, steps=2)
    weights = {k: v.clone() for k, v in model.module.state_dict().items()}

    def check():
        again = sample(model, cond, latent, seed=1, steps=2)
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


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one(good_run, steps):
    model, cond, latent, check = good_run
    with pytest.raises(ZImageInputError) as info:
        sample(model, cond, latent, seed=1, steps=steps)
    _assert_clear(info.value, "steps", "≥ 1")
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
