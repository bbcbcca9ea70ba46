"""Sigma schedules for Z-Image's flow-matching sampler (the diffusers Turbo pipeline's numbers)."""

from __future__ import annotations

import torch

from ..loaders.errors import ZImageInputError


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Static time shift: σ' = shift·σ / (1 + (shift − 1)·σ)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def full_schedule(steps: int, shift: float) -> torch.Tensor:
    """``steps`` + 1 sigmas: linspace(1, 1/N, N), shifted, then a terminal 0 (float32)."""
    sigmas = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    return torch.cat([shift_sigmas(sigmas, shift), torch.zeros(1, dtype=torch.float64)]).float()


def turbo_sigmas(steps: int, shift: float = 3.0, denoise: float = 1.0) -> torch.Tensor:
    """The schedule a sampler run walks. For ``denoise`` < 1, as ComfyUI's KSampler does (so seeds
    agree): build it for int(steps / denoise) steps and keep the last steps + 1 sigmas."""
    check_steps(steps)
    if not 0.0 < denoise <= 1.0:
        raise ZImageInputError("denoise", repr(denoise), "a value in (0, 1]", "use 1.0 for text-to-image, less to keep more of the input latent")
    if shift <= 0:
        raise ZImageInputError("shift", repr(shift), "a positive number (Z-Image-Turbo uses 3.0)", "set shift to 3.0")
    if denoise >= 1.0:
        return full_schedule(steps, shift)
    return full_schedule(int(steps / denoise), shift)[-(steps + 1):]


def check_steps(steps) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ZImageInputError("steps", repr(steps), "a whole number ≥ 1 (8 for Z-Image-Turbo)", "set steps to 8")
