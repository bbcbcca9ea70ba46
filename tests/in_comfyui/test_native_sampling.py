"""The Turbo / Base sampler on a native MODEL (nodes/native_sampling.py): against native KSampler
(euler, simple) on the same MODEL, seed and conditioning, and against the pack's diffusers engine on the
same weights; Base's CFG truncation and renormalisation against the engine's; the memory check."""

import pytest
import torch

import comfy.sample
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.nodes.native_sampling import sample_turbo
from zimage_pack.samplers import memory_budget
from zimage_pack.samplers.turbo import Guidance, sample

# 64×64 pixels (an 8×8 latent): a real-width forward costs ~2 s on two cores
LATENT = torch.zeros(1, 16, 8, 8)


def _features(seed, tokens=7):
    return torch.randn(tokens, 32, generator=torch.Generator().manual_seed(seed))


def _conditioning(features):
    return [[features[None], {}]]


def test_equals_native_ksampler_euler_simple_on_the_same_model(native):
    """For steps that divide 1000 KSampler's simple sigmas are the pack's; same noise, same euler."""
    positive = _conditioning(_features(1))
    ours = sample_turbo(native, positive, None, {"samples": LATENT.clone()}, seed=7, steps=2, disable_pbar=True)["samples"]
    noise = comfy.sample.prepare_noise(LATENT, 7)
    theirs = comfy.sample.sample(native, noise, 2, 1.0, "euler", "simple", positive, [], LATENT.clone(), disable_pbar=True, seed=7)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_img2img_equals_native_ksampler_where_the_schedules_differ(native):
    """2 steps at denoise 0.3 (6 steps, the last 3 sigmas; 1000 / 6 is not whole): KSampler's own pick, not a linspace."""
    positive = _conditioning(_features(2))
    start = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = sample_turbo(native, positive, None, {"samples": start.clone()}, seed=9, steps=2, denoise=0.3, disable_pbar=True)["samples"]
    theirs = comfy.sample.sample(native, comfy.sample.prepare_noise(start, 9), 2, 1.0, "euler", "simple", positive, [], start.clone(),
                                 denoise=0.3, disable_pbar=True, seed=9)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_equals_the_diffusers_engine_on_the_same_weights(native, engine):
    features = _features(4)
    ours = sample_turbo(native, _conditioning(features), None, {"samples": LATENT.clone()}, seed=11, steps=2, disable_pbar=True)["samples"]
    reference = sample(engine, [features], LATENT.clone(), seed=11, steps=2)
    assert (ours - reference).abs().max().item() <= 2e-4, (ours - reference).abs().max().item()


@pytest.mark.parametrize("truncation, renorm", [(0.1, 0.0), (1.0, 1.2)])  # 2 steps at σ 1 and 0.75 (progress 0, 0.25): 0.1 drops CFG on the second
def test_base_cfg_truncation_and_renorm_equal_the_engines(native, engine, truncation, renorm):
    pos, neg = _features(5), _features(6, tokens=4)
    ours = sample_turbo(native, _conditioning(pos), _conditioning(neg), {"samples": LATENT.clone()}, seed=13, steps=2, cfg=4.0,
                        cfg_truncation=truncation, cfg_renorm=renorm, disable_pbar=True)["samples"]
    reference = sample(engine, [pos], LATENT.clone(), seed=13, steps=2, guidance=Guidance(4.0, truncation, renorm, [neg]))
    assert (ours - reference).abs().max().item() <= 2e-4, (ours - reference).abs().max().item()


def test_a_run_bigger_than_the_machine_is_refused_before_anything_is_allocated(native, monkeypatch):
    monkeypatch.setattr(memory_budget, "host_available", lambda: 2 * 2**30)
    with pytest.raises(ZImageInputError, match="Nothing was allocated") as err:
        sample_turbo(native, _conditioning(_features(1)), None, {"samples": torch.zeros(4, 16, 256, 256)}, seed=1, disable_pbar=True)
    assert "2048×2048 × batch 4" in str(err.value) and "fits" in str(err.value)
