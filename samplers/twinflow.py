"""TwinFlow's few-step sampler ("few" style, 1–4 NFE), in the pack's conventions.

    t = bf16(linspace(g0, 1 − g1, N));  t = 1 − (1 − t) in bf16;  σ = 1 − t in bf16, then 0
                                        (2 NFE: [1.0, 0.6015625, 0]; 4 NFE: [1.0, 0.83203125, 0.6640625, 0.5, 0])
    for each (σ, σ_next), target timestep 0:
        F  = velocity(x, σ)                 (the pack's v: −model output, t_embedder_2 term on)
        x0 = x − σ·F ;  z = x + (1 − σ)·F
        x  = (1 − σ_next)·x0 + σ_next·(√(1 − r)·z + √r·ε)      fresh ε per step, r = stochastic ratio
    return the last x0

With r = 1 this is the 2-step sampler's x0 + re-noise rule. ε comes from the seed's generator after
ComfyUI's start noise, as the 2-step sampler draws its re-noise, so a seed means the same picture
here and in the authors' pipeline fed the same noises.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..loaders.errors import ZImageInputError
from ..loaders.param_sets import prepare_weights
from ..loaders.twinflow import target_timestep
from .latents import check_latent, seeded_noises, to_raw_space
from .turbo import (
    StepCallback,
    block_interrupts,
    checked_velocity,
    interruptible_modules,
    start_latent,
)

# The authors' gaps (g0, g1) by NFE.
DEFAULT_GAPS = {1: (0.001, 0.6), 2: (0.001, 0.6), 3: (0.001, 0.5), 4: (0.001, 0.5)}
MAX_NFE = 4


def twinflow_sigmas(nfe: int, gap_start: float | None = None, gap_end: float | None = None, denoise: float = 1.0) -> torch.Tensor:
    """σ for ``nfe`` model calls, a terminal 0 appended; ``denoise`` < 1 keeps the last ``nfe``
    of a longer schedule, as KSampler does."""
    if not 1 <= nfe <= MAX_NFE:
        raise ZImageInputError("nfe", str(nfe), f"1 to {MAX_NFE} model calls", "TwinFlow is made for 1–4 steps: use 2 (or 4)")
    if not 0 < denoise <= 1:
        raise ZImageInputError("denoise", str(denoise), "a value in (0, 1]", "use 1.0 for text-to-image")
    total = nfe if denoise >= 1 else max(nfe, min(MAX_NFE * 4, int(nfe / denoise)))
    g0, g1 = DEFAULT_GAPS[min(total, MAX_NFE)]
    g0 = g0 if gap_start is None else gap_start
    g1 = g1 if gap_end is None else gap_end
    if not (0 <= g0 < 1 - g1 <= 1):
        raise ZImageInputError("gap_end", f"gaps ({g0}, {g1})", "0 ≤ gap_start < 1 − gap_end", "use the defaults (0.001, 0.6 for 2 steps; 0.5 for 4)")
    return authors_grid(total, g0, g1)[-(nfe + 1):]


def authors_grid(steps: int, g0: float, g1: float) -> torch.Tensor:
    """The σ grid as the authors' ``UnifiedSampler.sampling_loop`` makes it in their pipeline's bf16:
    a float64 linspace cast to bf16, their Kumaraswamy time transform (identity at a = b = c = 1, but
    ``1 − (1 − t)`` is rounded twice in bf16), then σ = 1 − t, rounded again. With g1 = 0 the grid is
    made one point longer and its last point (σ 0) dropped. Rounding only σ once gives 0.66796875
    instead of 0.6640625 for 4 NFE's third step."""
    count = steps + 1 if g1 == 0 else steps
    t = torch.linspace(g0, 1.0 - g1, count, dtype=torch.float64).to(torch.bfloat16)
    if g1 == 0:
        t = t[:-1]
    t = 1 - (1 - t)  # (1 − (1 − t^a)^b)^c with a = b = c = 1, each step rounded to bf16
    return torch.cat([1 - t, torch.zeros(1, dtype=torch.bfloat16)]).to(torch.float32)


@torch.no_grad()
def sample_twinflow(
    transformer,
    features: list[torch.Tensor],
    latent: torch.Tensor,
    seed: int,
    nfe: int = 2,
    gap_start: float | None = None,
    gap_end: float | None = None,
    stochastic_ratio: float = 1.0,
    denoise: float = 1.0,
    on_step: StepCallback | None = None,
    check_interrupt: Callable[[], None] | None = None,
    sigmas: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(final latent, step-1 x0 prediction), both in ComfyUI's raw VAE space on the CPU."""
    check_latent(latent)
    if len(features) != latent.shape[0]:
        raise ZImageInputError("positive", f"{len(features)} prompt features", f"{latent.shape[0]} (one per latent)", "encode one prompt per image, or one for all")
    check_stochastic_ratio(stochastic_ratio)
    if sigmas is None:
        sigmas = twinflow_sigmas(nfe, gap_start, gap_end, denoise)
    total = len(sigmas) - 1
    noise, *fresh = seeded_noises(latent.shape, seed, total + 1)
    prepare_weights(transformer)
    device = transformer.device
    x = start_latent(latent, noise, float(sigmas[0]), device)

    def velocity(x, i):
        return checked_velocity(transformer, x, sigmas, i, features, None, check_interrupt)[2]

    report = None if on_step is None else (lambda i, x, x0: on_step(i, total, x0))
    with block_interrupts(interruptible_modules(transformer), check_interrupt), target_timestep(transformer.module, 0.0):
        x0, x0_first = twinflow_loop(velocity, x, sigmas, fresh, stochastic_ratio, report)
    return to_raw_space(x0).cpu(), to_raw_space(x0_first).cpu()


def check_stochastic_ratio(stochastic_ratio: float) -> None:
    if not 0 <= stochastic_ratio <= 1:
        raise ZImageInputError("stochastic_ratio", str(stochastic_ratio), "0 (deterministic) to 1 (fresh noise, the authors' default)", "use 1.0")


def twinflow_loop(velocity: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, sigmas, fresh_noises, stochastic_ratio: float,
                  callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop of the module docstring, for both backends: ``velocity(x, i)`` is F at ``sigmas[i]``
    (target timestep 0), ``fresh_noises[i]`` the noise mixed in after call i, ``callback(i, x, x0)``
    after each call. Returns (last x0, first x0) in model space."""
    r = float(stochastic_ratio)
    x0 = x0_first = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity(x, i)
        x0 = x - sigma * v
        z = x + (1.0 - sigma) * v
        if x0_first is None:
            x0_first = x0
        if callback is not None:
            callback(i, x, x0)
        mixed = math.sqrt(1.0 - r) * z + math.sqrt(r) * fresh_noises[i].to(device=x.device, dtype=x.dtype)
        x = (1.0 - sigma_next) * x0 + sigma_next * mixed
    return x0, x0_first
