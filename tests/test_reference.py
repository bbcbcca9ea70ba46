"""The sampler against diffusers' ZImagePipeline (the numerical reference), float32, same weights and noise."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.samplers.latents import comfy_noise, to_model_space, to_raw_space
from zimage_pack.samplers.schedules import full_schedule, turbo_sigmas
from zimage_pack.samplers.turbo import Guidance, sample


def _pipeline(transformer_module, vae):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer_module)


def _features(batch, seed=5, lengths=(7, 11, 4)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(lengths[i % len(lengths)], 32, generator=g) for i in range(batch)]


@pytest.fixture(scope="module")
def loaded(model_files):
    """The ComfyUI single file through our loader: the reference runs on the very same weights."""
    return load_transformer(model_files["comfy"])


@pytest.mark.parametrize("batch", [1, 2])
def test_turbo_matches_diffusers_pipeline(loaded, tiny_vae, batch):
    features = _features(batch)
    latent = torch.zeros(batch, 16, 12, 8)  # 64x96 px, not square on purpose
    noise = comfy_noise(latent.shape, seed=7)
    ours = sample(loaded, features, latent, seed=7, steps=8, shift=3.0)

    pipe = _pipeline(loaded.module, tiny_vae)
    ref = pipe(prompt_embeds=features, height=96, width=64, num_inference_steps=8, guidance_scale=0.0,
               latents=noise.clone(), output_type="latent").images
    assert ours.shape == ref.shape
    err = (ours - to_raw_space(ref)).abs().max().item()
    assert err <= 1e-4, f"max abs difference {err}"
    assert ours.abs().mean() > 0.1  # the run really moved away from zero


def test_cfg_truncation_and_renorm_match_pipeline(loaded, tiny_vae):
    features, negative = _features(1, seed=1), _features(1, seed=2, lengths=(5,))
    latent = torch.zeros(1, 16, 8, 8)
    noise = comfy_noise(latent.shape, seed=3)
    guidance = Guidance(cfg=4.0, truncation=0.6, renorm=1.2, negative=negative)
    ours = sample(loaded, features, latent, seed=3, steps=6, shift=3.0, guidance=guidance)
    pipe = _pipeline(loaded.module, tiny_vae)
    ref = pipe(prompt_embeds=features, negative_prompt_embeds=negative, height=64, width=64, num_inference_steps=6,
               guidance_scale=3.0, cfg_truncation=0.6, cfg_normalization=1.2, latents=noise.clone(), output_type="latent").images
    err = (ours - to_raw_space(ref)).abs().max().item()
    assert err <= 1e-4, f"max abs difference {err}"
    no_cfg = sample(loaded, features, latent, seed=3, steps=6, shift=3.0)
    assert (ours - no_cfg).abs().max() > 1e-3  # guidance changed the result


def test_schedule_is_design_formula():
    sig = turbo_sigmas(8, 3.0)
    base = torch.linspace(1, 1 / 8, 8)
    expected = torch.cat([3 * base / (1 + 2 * base), torch.zeros(1)])
    assert torch.allclose(sig, expected, atol=1e-7)
    assert sig[0] == 1.0 and sig[-1] == 0.0 and len(sig) == 9


def test_img2img_schedule_follows_ksampler_rule():
    # denoise d: schedule for int(steps/d) steps, keep the last steps + 1
    sig = turbo_sigmas(4, 3.0, denoise=0.5)
    assert torch.allclose(sig, full_schedule(8, 3.0)[-5:], atol=1e-7)  # 1000 / 8 is whole: simple = linspace


def test_img2img_schedule_is_comfyuis_simple_scheduler_where_it_is_not_a_linspace():
    """8 steps at denoise 0.6: 13 steps, and 1000 / 13 is not whole. ComfyUI picks table rows at
    int(x · 1000 / 13): the second σ is the shifted time 0.924, not linspace's 1 − 1/13 = 0.9231."""
    sig = turbo_sigmas(8, 3.0, denoise=0.6)
    assert len(sig) == 9 and sig[-1] == 0.0
    whole = torch.cat([torch.tensor([(1000 - int(x * 1000 / 13)) / 1000 for x in range(13)]), torch.zeros(1)])
    assert torch.allclose(sig, (3 * whole / (1 + 2 * whole))[-9:], atol=1e-6)
    assert not torch.allclose(sig, full_schedule(13, 3.0)[-9:], atol=1e-4)  # what the pack did before


def test_img2img_start_mixes_noise_and_input(loaded):
    features = _features(1)
    source = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(9))
    sigmas = turbo_sigmas(2, 3.0, denoise=0.5)
    seen = []

    class Spy(torch.nn.Module):
        """Records the model input; predicts zero velocity."""

        def __init__(self):
            super().__init__()
            self.x_pad_token = torch.nn.Parameter(torch.zeros(1, 64))

        def forward(self, x, t, caps, return_dict=False):
            seen.append(torch.stack(x).squeeze(2).clone())
            return ([torch.zeros_like(xi) for xi in x],)

    spy = type(loaded)(module=Spy(), storage_dtype=torch.float32, compute_dtype=torch.float32, source="spy")
    sample(spy, features, source, seed=4, steps=2, shift=3.0, denoise=0.5)
    s0 = float(sigmas[0])
    expected = s0 * comfy_noise(source.shape, 4) + (1 - s0) * to_model_space(source)
    assert torch.allclose(seen[0], expected, atol=1e-6)


def test_noise_is_comfyui_noise():
    shape = (2, 16, 8, 8)
    expected = torch.randn(shape, generator=torch.manual_seed(1234), dtype=torch.float32, device="cpu")
    assert torch.equal(comfy_noise(shape, 1234), expected)
