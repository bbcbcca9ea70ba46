"""Native MODEL, CLIP and VAE from the files native loaders cannot read (nodes/native_models.py): ComfyUI's
own models, with the same weights as ComfyUI's own loaders give for the single files."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import comfy.sd
import comfy.utils
from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.nodes.native_models import load_transformer_native, load_vae_native, text_encoder_state_dict

from conftest import THIN

FLUX_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2)  # the real FLUX.1 VAE's shape (84 M parameters)


def _same_weights(model, native, model_file):
    """The file's tensors, as UNETLoader's MODEL holds them (not read off ``native``'s module: it is shared by the
    session's clones, and whichever patched clone ComfyUI loaded last has its patches applied in it)."""
    ours, file = model.model.diffusion_model.state_dict(), load_file(model_file)
    assert set(ours) == set(native.model.diffusion_model.state_dict()) == set(file)
    assert all(torch.equal(ours[k].float(), file[k].float()) for k in file)
    assert type(model) is type(native)  # the same patcher class ComfyUI's own loader chose


def test_a_diffusers_transformer_folder_gives_the_model_unetloader_gives_for_the_single_file(native, model_file, tmp_path):
    folder = tmp_path / "Z-Image-Thin"
    dm.write_transformer(dm.make_transformer(seed=0, **THIN).to(torch.bfloat16), str(folder / "transformer"), "folder")
    (folder / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}')
    _same_weights(load_transformer_native(str(folder)), native, model_file)


@pytest.mark.parametrize("prefix", ["transformer.", "model."])
def test_a_single_file_under_a_prefix_comfyui_does_not_strip_loads(native, model_file, tmp_path, prefix):
    state = load_file(model_file)
    path = str(tmp_path / "prefixed.safetensors")
    save_file({prefix + k: v for k, v in state.items()}, path)
    _same_weights(load_transformer_native(path), native, model_file)


def test_a_file_of_another_kind_is_refused_by_name(tmp_path):
    path = str(tmp_path / "vae_by_mistake.safetensors")
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4), "encoder.conv_in.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(ZImageInputError, match="vae_by_mistake.safetensors"):
        load_transformer_native(path)
    with pytest.raises(ZImageInputError, match="weight_dtype"):
        load_transformer_native(path, "int3")


def test_a_diffusers_vae_folder_gives_the_vae_vaeloader_gives_for_ae_safetensors(tmp_path):
    vae = dm.make_vae(seed=2, **FLUX_VAE)
    dm.write_vae(vae, str(tmp_path / "vae"), "folder")
    single = dm.write_vae(vae, str(tmp_path / "ae.safetensors"))
    ours, theirs = load_vae_native(str(tmp_path)), comfy.sd.VAE(sd=comfy.utils.load_torch_file(single))
    latent = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours.decode(latent), theirs.decode(latent))


def test_a_text_encoder_folder_gives_the_state_dict_cliploader_reads_from_qwen_3_4b(tmp_path):
    """ComfyUI builds Qwen3-4B at its full 36 × 2560 whatever the file holds, so the CLIP itself is built in
    the real-server suite (tests/example_files.py); here: the folder's shards become exactly the tensors,
    under exactly the names, of the single file CLIPLoader reads."""
    encoder = dm.make_text_encoder(seed=3)
    dm.write_text_encoder(encoder, str(tmp_path / "pipe" / "text_encoder"), "folder")
    single = dm.write_text_encoder(encoder, str(tmp_path / "qwen_3_4b.safetensors"))
    theirs = comfy.utils.load_torch_file(single)
    ours = text_encoder_state_dict(str(tmp_path / "pipe"))
    assert set(ours) == set(theirs) and all(k.startswith("model.") for k in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    bare = str(tmp_path / "bare.safetensors")
    save_file({k[len("model."):]: v.contiguous() for k, v in theirs.items()}, bare)  # a trainer's save without "model."
    assert set(text_encoder_state_dict(bare)) == set(theirs)


THIN_QWEN = {"hidden_size": 2560, "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}


def test_a_text_encoder_folder_gives_comfyuis_clip_that_encodes_as_the_engine_does(tmp_path):
    """The Z-Image Text Encoder Loader's CLIP (ComfyUI's Qwen3-4B, its tokenizer and Z-Image's template; sizes
    read off the shapes) from a diffusers folder of a thin Qwen3 (hidden 2560, 3 layers, the full vocabulary),
    against the engine's encoding (transformers' Qwen3 in float32, the second-to-last hidden state of the valid
    tokens, the same BPE): ComfyUI computes its text encoder in fp16 on the CPU, hence 2e-2 relative."""
    import os

    import comfy.model_management

    from zimage_pack.loaders.text_encoder import encode_prompts, load_text_encoder
    from zimage_pack.nodes.native_models import load_text_encoder_native

    encoder = dm.make_text_encoder(seed=3, **THIN_QWEN).to(torch.bfloat16)
    dm.write_text_encoder(encoder, str(tmp_path / "pipe" / "text_encoder"), "folder")
    del encoder
    clip = load_text_encoder_native(str(tmp_path / "pipe"))
    tokenizer = os.path.join(os.path.dirname(comfy.model_management.__file__), "text_encoders", "qwen25_tokenizer")
    engine = load_text_encoder(str(tmp_path / "pipe"), tokenizer, compute_dtype="fp32")
    outputs = []
    for text in ("a red fox in fresh snow", "a red fox in fresh grass"):
        ours = clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0][0].float()
        (reference,) = encode_prompts(engine, [text])
        assert ours.shape == reference.shape, (ours.shape, reference.shape)
        rel = ((ours - reference).norm() / reference.norm()).item()
        assert rel < 2e-2, rel
        outputs.append(ours)
    assert outputs[0].shape == outputs[1].shape and ((outputs[0] - outputs[1]).norm() / outputs[0].norm()).item() > 0.1


def test_the_loader_on_a_twinflow_file_gives_the_patched_model_and_comfyui_can_rebuild_it(native, model_file, tmp_path):
    """TwinFlow's single file under ``extended_weights.`` as a trainer writes it: the base weights as
    UNETLoader's, t_embedder_2 as the TwinFlow patch; the factory ComfyUI calls for a non-dynamic copy
    (``cached_patcher_init`` with disable_dynamic=True) gives the same."""
    from zimage_pack.nodes.native_twinflow import is_twinflow

    state = load_file(model_file)
    generator = torch.Generator().manual_seed(4)
    extra = {f"extended_weights.t_embedder_2.{name}": (torch.randn(*state[f"t_embedder.{name}"].shape, generator=generator) * 0.02).to(torch.bfloat16)
             for name in ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")}
    path = str(tmp_path / "TwinFlow-thin.safetensors")
    save_file({**state, **extra}, path)
    del state
    model = load_transformer_native(path)
    assert is_twinflow(model) and not is_twinflow(native)
    base = model.model.diffusion_model.state_dict()
    assert torch.equal(base["layers.0.attention.qkv.weight"].float(), load_file(model_file)["layers.0.attention.qkv.weight"].float())
    factory, args = model.cached_patcher_init
    again = factory(*args, disable_dynamic=True)
    assert is_twinflow(again)
