"""Sigma schedules for Z-Image's flow-matching sampler: text-to-image as the diffusers Turbo pipeline
builds it, image-to-image as ComfyUI's KSampler (``simple`` scheduler) builds it, and ComfyUI's
percent → σ rule for the ControlNet's start/end range."""

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


MODEL_SHIFT = 3.0  # Z-Image's own shift (ComfyUI's ZImage model config; ModelSamplingAuraFlow 3 in the template)
COMFY_TIMESTEPS = 1000  # the table ComfyUI's flow model sampling holds


def comfy_sigma_table(shift: float) -> torch.Tensor:
    """ComfyUI's flow ``model_sampling.sigmas`` for Z-Image (multiplier 1): σ(i/1000) for i = 1…1000,
    shifted, computed in float32 as it does."""
    t = torch.arange(1, COMFY_TIMESTEPS + 1, 1) / COMFY_TIMESTEPS
    return shift * t / (1 + (shift - 1) * t)


def comfy_simple_schedule(steps: int, shift: float) -> torch.Tensor:
    """ComfyUI's ``simple`` scheduler: ``steps`` picks from the table at int(x · 1000 / steps) from
    the top (not a linspace: the two differ where 1000 / steps is not whole), then a terminal 0."""
    table = comfy_sigma_table(shift)
    stride = len(table) / steps
    return torch.tensor([float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0], dtype=torch.float32)


def percent_to_sigma(percent: float, shift: float = MODEL_SHIFT) -> float:
    """ComfyUI's rule for a start/end percent on a flow model: the σ of the *unshifted* time 1 − percent,
    shifted (0 % → σ 1, 100 % → σ 0). ComfyUI's ControlNets are active where σ_end ≤ σ ≤ σ_start."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    t = 1.0 - percent
    return shift * t / (1 + (shift - 1) * t)


def turbo_sigmas(steps: int, shift: float = 3.0, denoise: float = 1.0) -> torch.Tensor:
    """The schedule a sampler run walks. Text-to-image: the diffusers pipeline's linspace (for steps
    that divide 1000, such as Turbo's 8, ComfyUI's simple scheduler gives the same sigmas). For
    ``denoise`` < 1, what ComfyUI's KSampler does, so seeds and pictures agree: its simple scheduler for
    int(steps / denoise) steps, the last steps + 1 sigmas kept."""
    check_steps(steps)
    if not 0.0 < denoise <= 1.0:
        raise ZImageInputError("denoise", repr(denoise), "a value in (0, 1]", "use 1.0 for text-to-image, less to keep more of the input latent")
    if shift <= 0:
        raise ZImageInputError("shift", repr(shift), "a positive number (Z-Image-Turbo uses 3.0)", "set shift to 3.0")
    if denoise >= 1.0:
        return full_schedule(steps, shift)
    return comfy_simple_schedule(int(steps / denoise), shift)[-(steps + 1):]


def check_steps(steps) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ZImageInputError("steps", repr(steps), "a whole number ≥ 1 (8 for Z-Image-Turbo)", "set steps to 8")
