"""The 2-step step-decoupled sampler: step 1 with step 1's parameters for the whole batch, then the
swap to step 2's, then step 2.

Schedule: unshifted 1.0 → σ_mid → 0, shifted like the Turbo schedule (σ_mid 0.5 with shift 3 is
exactly what the 8-step sampler walks when asked for 2 steps). Step-2 rule:
- "euler": the deterministic flow step x ← x + (σ_mid − 1)·v;
- "x0_renoise": predict x0 = x − v, then re-noise to σ_mid with fresh noise drawn from the same seed.

The arithmetic is here once (``two_step_loop`` / ``first_step`` / ``second_step``, on a plain "velocity
at σ" callable); the engine's ``sample_two_step`` and the ComfyUI side (nodes/native_two_step.py, each
step a ComfyUI sampling run on its own MODEL) both drive it.
"""

from __future__ import annotations

from collections.abc import Callable

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


# velocity_fn(x in model space, σ) -> the flow velocity v at x (x0 = x − σ·v)
VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


def first_step(velocity_fn: VelocityFn, x: torch.Tensor, s0: float, s1: float, rule: str,
               renoise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1 from σ0: (x at σ_mid for step 2, step 1's x0 prediction)."""
    v = velocity_fn(x, s0)
    x0 = x - s0 * v
    if rule == "euler":
        return x + (s1 - s0) * v, x0
    if rule != "x0_renoise":
        raise ZImageInputError("step2_rule", repr(rule), "euler or x0_renoise", "use 'euler'")
    if renoise is None:
        raise ValueError("the x0_renoise rule needs the re-noise drawn from the seed")
    return s1 * renoise.to(x.device, x.dtype) + (1.0 - s1) * x0, x0


def second_step(velocity_fn: VelocityFn, x_mid: torch.Tensor, s1: float) -> torch.Tensor:
    """Step 2 from σ_mid straight to the image: x0 = x − σ_mid·v."""
    return x_mid - s1 * velocity_fn(x_mid, s1)


def two_step_loop(velocity_fn_step1: VelocityFn, velocity_fn_step2: VelocityFn, x: torch.Tensor, sigmas, rule: str,
                  renoise: torch.Tensor | None = None, callback: StepCallback | None = None,
                  between: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both steps on ``sigmas`` = [σ0, σ_mid, 0] (model space): (final x0, step 1's x0). ``between`` runs
    after step 1 (an interrupt check; the swap to step 2's parameters)."""
    s0, s1 = float(sigmas[0]), float(sigmas[1])
    x_mid, x0_step1 = first_step(velocity_fn_step1, x, s0, s1, rule, renoise)
    if callback is not None:
        callback(0, 2, x0_step1)
    if between is not None:
        between()
    x0 = second_step(velocity_fn_step2, x_mid, s1)
    if callback is not None:
        callback(1, 2, x0)
    return x0, x0_step1


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
    def velocity(view, index):
        def fn(x, sigma):
            prepare_weights(view)  # the swap to this step's parameters (step 1: the module's own)
            v = predict_velocity(view, x, sigma, features, None, settings.shift)
            check_finite(v, index, 2, view.compute_dtype)
            return v
        return fn

    step1, step2 = model.steps
    x0, x0_step1 = two_step_loop(velocity(step1, 0), velocity(step2, 1), x, (s0, s1, 0.0), settings.step2_rule,
                                 renoise, on_step, check_interrupt)
    return to_raw_space(x0).cpu(), to_raw_space(x0_step1).cpu()
