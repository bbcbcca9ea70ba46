"""The 2-step step-decoupled sampler: step 1 with step 1's parameters for the whole batch, then the
swap to step 2's, then step 2.

Schedule: unshifted 1.0 → σ_mid → 0, shifted like the Turbo schedule (σ_mid 0.5 with shift 3 is
exactly what the 8-step sampler walks when asked for 2 steps). Step-2 rule:
- "euler": the deterministic flow step x ← x + (σ_mid − 1)·v;
- "x0_renoise": predict x0 = x − v, then re-noise to σ_mid with fresh noise drawn from the same seed.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..loaders.compute_dtype import check_finite
from ..loaders.errors import ZImageInputError
from ..loaders.param_sets import prepare_weights
from ..loaders.step_decoupled import StepSettings
from .latents import check_latent, seeded_noises, to_model_space, to_raw_space
from .schedules import shift_sigmas
from .turbo import StepCallback, block_interrupts, interruptible_modules, predict_velocity


def two_step_sigmas(settings: StepSettings, denoise: float = 1.0) -> torch.Tensor:
    """[σ0, σ_mid', 0] after the shift (σ0 = 1 for text-to-image)."""
    settings.check()
    if not 0.0 < denoise <= 1.0:
        raise ZImageInputError("denoise", repr(denoise), "a value in (0, 1]", "use 1.0 for text-to-image")
    unshifted = torch.tensor([denoise, settings.sigma_mid * denoise], dtype=torch.float64)
    return torch.cat([shift_sigmas(unshifted, settings.shift), torch.zeros(1, dtype=torch.float64)]).float()


def noises(shape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The start noise (ComfyUI's, for the same seed) and the re-noise drawn after it from the same generator."""
    first, renoise = seeded_noises(shape, seed, 2)
    return first, renoise


@torch.no_grad()
def sample_two_step(
    model,
    features: list[torch.Tensor],
    latent: torch.Tensor,
    seed: int,
    settings: StepSettings,
    denoise: float = 1.0,
    on_step: StepCallback | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (final latent, step-1 x0 prediction), both in ComfyUI's raw VAE space on the CPU."""
    check_latent(latent)
    if len(features) != latent.shape[0]:
        raise ZImageInputError("positive", f"{len(features)} prompt features", f"{latent.shape[0]} (one per latent)", "encode one prompt per image, or one for all")
    sigmas = two_step_sigmas(settings, denoise)
    s0, s1 = float(sigmas[0]), float(sigmas[1])
    step1, step2 = model.steps
    noise, renoise = noises(latent.shape, seed)
    device = step1.device
    x = (s0 * noise + (1.0 - s0) * to_model_space(latent.float())).to(device)

    with block_interrupts(interruptible_modules(step1) + interruptible_modules(step2)[1:], check_interrupt):
        return _two_steps(model, features, x, s0, s1, settings, renoise, on_step, check_interrupt)


def _two_steps(model, features, x, s0, s1, settings, renoise, on_step, check_interrupt):
    step1, step2 = model.steps
    device = x.device
    prepare_weights(step1)
    v = predict_velocity(step1, x, s0, features, None, settings.shift)
    check_finite(v, 0, 2, step1.compute_dtype)
    x0_step1 = x - s0 * v
    if on_step is not None:
        on_step(0, 2, x0_step1)
    if settings.step2_rule == "euler":
        x = x + (s1 - s0) * v
    else:
        x = s1 * renoise.to(device) + (1.0 - s1) * x0_step1
    if check_interrupt is not None:
        check_interrupt()

    prepare_weights(step2)
    v = predict_velocity(step2, x, s1, features, None, settings.shift)
    check_finite(v, 1, 2, step2.compute_dtype)
    x = x - s1 * v
    if on_step is not None:
        on_step(1, 2, x)
    return to_raw_space(x).cpu(), to_raw_space(x0_step1).cpu()
