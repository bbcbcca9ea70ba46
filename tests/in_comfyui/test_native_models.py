"""Native MODEL and VAE from diffusers folders (nodes/native_models.py): ComfyUI's own models, with the
same weights as ComfyUI's own loaders give for the single files."""

import torch

import comfy.sd
import comfy.utils
from zimage_pack.loaders import demo_models as dm
from zimage_pack.nodes.native_models import load_transformer_folder, load_vae_folder

from conftest import THIN

FLUX_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2)  # the real FLUX.1 VAE's shape (84 M parameters)


def test_a_diffusers_transformer_folder_gives_the_model_unetloader_gives_for_the_single_file(native, tmp_path):
    folder = tmp_path / "Z-Image-Thin"
    dm.write_transformer(dm.make_transformer(seed=0, **THIN).to(torch.bfloat16), str(folder / "transformer"), "folder")
    (folder / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}')
    model = load_transformer_folder(str(folder))
    ours, theirs = model.model.diffusion_model.state_dict(), native.model.diffusion_model.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert type(model) is type(native)  # the same patcher class ComfyUI's own loader chose


def test_a_diffusers_vae_folder_gives_the_vae_vaeloader_gives_for_ae_safetensors(tmp_path):
    vae = dm.make_vae(seed=2, **FLUX_VAE)
    dm.write_vae(vae, str(tmp_path / "vae"), "folder")
    single = dm.write_vae(vae, str(tmp_path / "ae.safetensors"))
    ours, theirs = load_vae_folder(str(tmp_path)), comfy.sd.VAE(sd=comfy.utils.load_torch_file(single))
    latent = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours.decode(latent), theirs.decode(latent))
