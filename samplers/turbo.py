"""The Z-Image flow-matching Euler sampler (Turbo: 8 steps, no CFG; Base: CFG with truncation and
renormalisation), numerically the diffusers ``ZImagePipeline`` loop.

Progress, preview and interruption arrive as plain callbacks, so this runs with or without ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..loaders.compute_dtype import check_finite, match_controlnet
from ..loaders.errors import ZImageInputError
from ..loaders.param_sets import prepare_weights
from .control import forward_with_control
from .latents import check_latent, comfy_noise, to_model_space, to_raw_space
from .schedules import MODEL_SHIFT, turbo_sigmas

# on_step(step_index, total_steps, x0_prediction_in_model_space)
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class Guidance:
    """Classifier-free guidance in ComfyUI's convention: ``cfg`` 1.0 = off.

    ``truncation``: CFG stops once the denoising progress (1 − σ) passes it (1.0 = never).
    ``renorm``: the guided prediction's norm is capped at renorm × the positive one (0 = off)."""

    cfg: float = 1.0
    truncation: float = 1.0
    renorm: float = 0.0
    negative: Optional[list[torch.Tensor]] = None

    def active_at(self, sigma: float) -> bool:
        return self.negative is not None and cfg_active(sigma, self.cfg, self.truncation)


def cfg_active(sigma: float, cfg: float, truncation: float) -> bool:
    """CFG runs while the denoising progress 1 − σ has not passed ``truncation`` (diffusers' rule)."""
    return cfg != 1.0 and (1.0 - sigma) <= truncation


def guided(pos: torch.Tensor, neg: torch.Tensor, cfg: float, renorm: float) -> torch.Tensor:
    """pos + (cfg − 1)·(pos − neg), its norm per sample capped at ``renorm`` × the positive's (0 = off).
    Linear in its inputs, so it holds for the model's output, the velocity or x − x0 alike."""
    out = pos + (cfg - 1.0) * (pos - neg)
    if renorm > 0:
        dims = tuple(range(1, pos.ndim))
        pos_norm = torch.linalg.vector_norm(pos, dim=dims, keepdim=True)
        new_norm = torch.linalg.vector_norm(out, dim=dims, keepdim=True)
        cap = pos_norm * renorm
        out = torch.where(new_norm > cap, out * (cap / new_norm), out)
    return out


def predict_velocity(transformer, x: torch.Tensor, sigma: float, features: list[torch.Tensor], guidance: Guidance | None,
                     shift: float = MODEL_SHIFT) -> torch.Tensor:
    """The flow velocity v (float32) at ``x`` (model space, [B, C, H, W]), ControlNets included (active
    by their start/end percent on ``shift``, as ComfyUI reads them on a MODEL with that shift)."""
    module, compute_dtype = transformer.module, transformer.compute_dtype
    batch = x.shape[0]
    use_cfg = guidance is not None and guidance.active_at(sigma)
    inputs = x.to(compute_dtype)
    captions = [f.to(x.device, compute_dtype) for f in features]
    if use_cfg:
        inputs = inputs.repeat(2, 1, 1, 1)
        captions = captions + [f.to(x.device, compute_dtype) for f in guidance.negative]
    t = torch.full((inputs.shape[0],), 1.0 - sigma, device=x.device, dtype=torch.float32)
    active = [c for c in getattr(transformer, "controls", ()) if c.active_at(sigma, shift)]
    if active:
        controls = []
        for spec in active:
            match_controlnet(spec.controlnet, compute_dtype)
            control = spec.control_latents(batch, x.shape[2], x.shape[3], x.device, compute_dtype)
            controls.append((spec.controlnet, control.repeat(inputs.shape[0] // batch, 1, 1, 1), spec.strength))
        out = forward_with_control(module, list(inputs.unsqueeze(2).unbind(0)), t, captions, controls)
    else:
        out = module(list(inputs.unsqueeze(2).unbind(0)), t, captions, return_dict=False)[0]
    pred = torch.stack([o.float() for o in out]).squeeze(2)
    if use_cfg:
        pred = guided(pred[:batch], pred[batch:], guidance.cfg, guidance.renorm)
    return -pred


class block_interrupts:
    """``check_interrupt`` before every transformer block (and ControlNet block), so that one long
    step (a large image on a CPU) can still be stopped; removed on exit, also on an interrupt."""

    def __init__(self, modules, check_interrupt: Callable[[], None] | None):
        self.modules, self.check, self.handles = modules, check_interrupt, []

    def __enter__(self):
        if self.check is not None:
            check = self.check
            for module in self.modules:
                for block in module.modules():
                    if type(block).__name__ in ("ZImageTransformerBlock", "ZImageControlTransformerBlock"):
                        self.handles.append(block.register_forward_pre_hook(lambda *_: check()))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return False


def interruptible_modules(transformer) -> list:
    return [transformer.module] + [spec.controlnet.module for spec in getattr(transformer, "controls", ())]


def start_latent(latent: torch.Tensor, noise: torch.Tensor, sigma0: float, device) -> torch.Tensor:
    """x at the first σ (model space): pure noise for text-to-image, noised input for image-to-image."""
    return (sigma0 * noise + (1.0 - sigma0) * to_model_space(latent.float())).to(device)


def checked_velocity(transformer, x, sigmas, i: int, features, guidance, check_interrupt, shift: float = MODEL_SHIFT) -> tuple[float, float, torch.Tensor]:
    """(σ_i, σ_i+1, velocity at step i): the interrupt checked first, a non-finite output refused."""
    if check_interrupt is not None:
        check_interrupt()
    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
    v = predict_velocity(transformer, x, sigma, features, guidance, shift)
    check_finite(v, i, len(sigmas) - 1, transformer.compute_dtype)
    return sigma, sigma_next, v


@torch.no_grad()
def sample(
    transformer,
    features: list[torch.Tensor],
    latent: torch.Tensor,
    seed: int,
    steps: int = 8,
    shift: float = 3.0,
    denoise: float = 1.0,
    guidance: Guidance | None = None,
    sigmas: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    on_step: StepCallback | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Denoise ``latent`` (ComfyUI raw VAE space) and return the result in the same space (float32, CPU).

    ``transformer`` is a loaded :class:`ZImageTransformer`; ``features`` one ``[L, C]`` tensor per
    image. With ``denoise`` = 1 the input latent only gives the shape (text-to-image)."""
    check_latent(latent)
    if len(features) != latent.shape[0]:
        raise ZImageInputError("positive", f"{len(features)} prompt features", f"{latent.shape[0]} (one per latent)", "encode one prompt per image, or one for all")
    if sigmas is None:
        sigmas = turbo_sigmas(steps, shift, denoise)
    prepare_weights(transformer)
    device = transformer.device
    if noise is None:
        noise = comfy_noise(latent.shape, seed)
    x = start_latent(latent, noise, float(sigmas[0]), device)
    total = len(sigmas) - 1
    with block_interrupts(interruptible_modules(transformer), check_interrupt):
        for i in range(total):
            sigma, sigma_next, v = checked_velocity(transformer, x, sigmas, i, features, guidance, check_interrupt, shift)
            if on_step is not None:
                on_step(i, total, x - sigma * v)  # x0 prediction, for previews
            x = x + (sigma_next - sigma) * v
    return to_raw_space(x).cpu()
