"""What the ControlNet tests and benches in ComfyUI share: a thin real-width Z-Image (native MODEL and the
pack's float32 engine on the same file), a FLUX-shaped VAE (native and the pack's), the real-width ControlNet
stand-ins (tests/published_controlnets.py ``thin_state``), and one model call at σ through ComfyUI's
sampling (its conditioning, model loading and patches) giving the velocity."""

from __future__ import annotations

import os

import published_controlnets as published
import torch

THIN = {"dim": 3840, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "cap_feat_dim": 32, "axes_dims": [32, 48, 48]}
FLUX_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}  # ComfyUI recognises the FLUX VAE by its shape

# one file per layout (Tile, 2601 and 2602 share 2.1's and 2.1 lite's)
LAYOUTS = {
    "1.0": "Z-Image-Turbo-Fun-Controlnet-Union.safetensors",
    "2.0": "Z-Image-Turbo-Fun-Controlnet-Union-2.0.safetensors",
    "2.0 (no refiner keys)": "Z-Image-Turbo-Fun-Controlnet-Union-2.0-no-refiner.safetensors",
    "2.1": "Z-Image-Turbo-Fun-Controlnet-Union-2.1-8steps.safetensors",
    "2.1 Tile": "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-8steps.safetensors",
    "2.1 lite": "Z-Image-Turbo-Fun-Controlnet-Union-2.1-lite-2601-8steps.safetensors",
}


def make_vaes(folder: str) -> dict:
    """ComfyUI's VAE and the pack's (float32) on one FLUX-shaped file."""
    import comfy.sd
    import comfy.utils
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders.vae import load_vae

    vae_path = dm.write_vae(dm.make_vae(seed=5, **FLUX_VAE), os.path.join(folder, "ae.safetensors"))
    return {"vae": comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path)), "pack_vae": load_vae(vae_path, compute_dtype="fp32")}


def make_world(folder: str, layers: int = 1, engine: bool = True) -> dict:
    """native MODEL, float32 engine (unless ``engine`` is False), native VAE and the pack's VAE on the same files."""
    import comfy.sd
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders.transformer import load_transformer

    model = dm.make_transformer(seed=0, n_layers=layers, **THIN).to(torch.bfloat16)
    path = dm.write_transformer(model, os.path.join(folder, f"z_image_thin_{layers}_layers.safetensors"), "comfy")
    del model
    world = {"native": comfy.sd.load_diffusion_model(path), **make_vaes(folder)}
    if engine:
        world["engine"] = load_transformer(path, compute_dtype="fp32")
    return world


def images(batch: int = 1, height: int = 64, width: int = 64, seed: int = 0):
    """(hint IMAGE, inpaint IMAGE, MASK with a repainted rectangle) at the given pixel size."""
    g = torch.Generator().manual_seed(seed)
    hint = torch.rand(batch, height, width, 3, generator=g)
    inpaint = torch.rand(batch, height, width, 3, generator=g)
    mask = torch.zeros(batch, height, width)
    mask[:, height // 4: 3 * height // 4, width // 8: width // 2] = 1.0
    return hint, inpaint, mask


def features(seed: int = 1, tokens: int = 7) -> torch.Tensor:
    return torch.randn(tokens, THIN["cap_feat_dim"], generator=torch.Generator().manual_seed(seed))


def velocity(model, sigma: float, positive_features: torch.Tensor, latent: torch.Tensor, seed: int = 3):
    """(the model-space input x, the velocity v at σ) from one model call through comfy.sample.sample_custom
    (cfg 1: the positive only); v = (x − x0) / σ from the denoised output ComfyUI gives."""
    import comfy.sample
    import comfy.samplers

    seen = {}

    def one_call(m, x, sigmas, extra_args=None, callback=None, disable=None):
        denoised = m(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))
        seen["x"], seen["v"] = x.clone(), ((x - denoised) / sigmas[0]).float()
        return denoised

    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():  # as ComfyUI runs its nodes
        comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.KSAMPLER(one_call), torch.tensor([sigma, 0.0]),
                                   [[positive_features[None], {}]], [], latent, disable_pbar=True, seed=seed)
    return seen["x"].float().clone(), seen["v"].clone()


def reference_velocity(engine, pack_vae, controls, x, sigma, positive_features):
    """The pack's engine (diffusers' transformer, float32) with ControlSpecs: the reference."""
    from zimage_pack.samplers.turbo import predict_velocity

    controlled = engine
    for spec in controls:
        controlled = controlled.with_control(spec)
    with torch.no_grad():
        return predict_velocity(controlled, x, sigma, [positive_features], None)


def reference_controlnet(state: dict):
    """diffusers' ZImageControlNetModel on the float32 stand-in (shared tensors stay shared)."""
    from zimage_pack.loaders.controlnet import controlnet_from_state

    return controlnet_from_state(state, "default", "memory")


def relative(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    diff = (got.float() - want.float()).abs().max().item()
    return diff, diff / want.float().abs().max().item()


def state_for(layout: str, seed: int = 0) -> dict:
    return published.thin_state(LAYOUTS[layout], seed=seed)
