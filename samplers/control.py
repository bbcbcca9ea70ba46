"""ControlNet conditioning at sampling time.

``forward_with_control`` runs diffusers' Z-Image transformer block by block (its own modules and
helpers; the DiT itself is not re-implemented) so that the Fun ControlNet's hints go where the
reference (VideoX-Fun, ComfyUI) puts them: each control layer's hint × strength after the matching
main layer, and for 2.x the refiner hints into the main noise refiner — which diffusers 0.42's
pipeline leaves out. The control branch itself is computed exactly as diffusers'
``ZImageControlNetModel`` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from ..loaders.errors import ZImageInputError
from ..loaders.residency import top_level_onloaded
from ..loaders.vae import encode
from .latents import to_model_space
from .schedules import MODEL_SHIFT, percent_to_sigma

PATCH = "2-1"


@dataclass(eq=False)
class ControlSpec:
    """One ControlNet with its inputs, strength and active range (start/end percent, as ComfyUI reads them)."""

    controlnet: object  # ZImageControlNet
    vae: object  # ZImageVAE
    image: torch.Tensor | None  # IMAGE [B, H, W, 3]
    strength: float
    start: float = 0.0
    end: float = 1.0
    inpaint_image: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # MASK [B, H, W], 1 = repaint
    resize: str = "crop"
    _cache: dict = field(default_factory=dict, repr=False)

    def active_at(self, sigma: float, shift: float = MODEL_SHIFT) -> bool:
        """ComfyUI's rule (``percent_to_sigma`` on the model's shift): active where σ_end ≤ σ ≤ σ_start,
        so a workflow made in ComfyUI controls the same steps here."""
        sigma = float(torch.tensor(sigma, dtype=torch.float32))  # ComfyUI compares the float32 σ of the step
        return self.strength != 0 and percent_to_sigma(self.end, shift) <= sigma <= percent_to_sigma(self.start, shift)

    def control_latents(self, batch: int, height: int, width: int, device, dtype) -> torch.Tensor:
        """The control input [batch, C, h, w] in model space (encoded once per size and batch)."""
        key = (batch, height, width)
        if key not in self._cache:
            self._cache[key] = build_control_input(self, batch, height, width)
        return self._cache[key].to(device, dtype)


def fit_image(image: torch.Tensor, height: int, width: int, batch: int, mode: str) -> torch.Tensor:
    """IMAGE [b, H, W, C] -> [batch, height, width, C]: batch repeated cyclically, size by crop or stretch."""
    pixels = image.movedim(-1, 1).float()
    if mode == "crop":  # scale to cover, then centre-crop
        scale = max(height / pixels.shape[2], width / pixels.shape[3])
        size = (max(height, round(pixels.shape[2] * scale)), max(width, round(pixels.shape[3] * scale)))
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        top, left = (pixels.shape[2] - height) // 2, (pixels.shape[3] - width) // 2
        pixels = pixels[:, :, top:top + height, left:left + width]
    elif mode == "stretch":
        pixels = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    else:
        raise ZImageInputError("resize", repr(mode), "'crop' or 'stretch'", "pick one from the list")
    index = torch.arange(batch) % pixels.shape[0]
    return pixels[index].movedim(1, -1).clamp(0, 1)


def build_control_input(spec: ControlSpec, batch: int, height: int, width: int) -> torch.Tensor:
    return assemble_control_input(lambda pixels: to_model_space(encode(spec.vae, pixels)), spec.controlnet.inpaint_channels,
                                  spec.controlnet.version, spec.image, spec.inpaint_image, spec.mask, spec.resize, batch, height, width)


def assemble_control_input(encode_pixels, inpaint_channels: bool, version: str, image, inpaint_image, mask, resize: str,
                           batch: int, height: int, width: int) -> torch.Tensor:
    """16 channels (the hint's latent) or, for 33-channel ControlNets, [control 16, mask 1, inpaint 16]
    as the reference builds it: the mask channel is 1 − mask at latent size (0 without a mask), the
    inpaint image has its masked pixels set to grey, and a missing image is a grey one.
    ``encode_pixels``: IMAGE [B, H, W, 3] → model-space latent (whichever VAE the caller holds)."""
    px_h, px_w = height * 8, width * 8
    grey = torch.full((batch, px_h, px_w, 3), 0.5)
    control_pixels = fit_image(image[..., :3], px_h, px_w, batch, resize) if image is not None else None
    if not inpaint_channels:
        if control_pixels is None:
            raise ZImageInputError("image", "no hint image", f"a hint image for a {version} ControlNet", "connect the control image (canny, depth, pose…)")
        return encode_pixels(control_pixels)
    control = encode_pixels(control_pixels if control_pixels is not None else grey)
    inpaint = fit_image(inpaint_image[..., :3], px_h, px_w, batch, resize) if inpaint_image is not None else grey
    if mask is not None:
        mask = fit_mask(mask, px_h, px_w, batch, resize)  # [batch, 1, H, W], 1 = repaint
        inpaint = (inpaint - 0.5) * (1 - mask).round().movedim(1, -1) + 0.5
        mask_channel = F.interpolate(1 - mask, size=(height, width), mode="nearest")
    else:
        mask_channel = torch.zeros(batch, 1, height, width)
    inpaint_latent = encode_pixels(inpaint)
    return torch.cat([control, mask_channel.to(inpaint_latent), inpaint_latent], dim=1)


def fit_mask(mask: torch.Tensor, height: int, width: int, batch: int, mode: str) -> torch.Tensor:
    if mask.ndim == 2:
        mask = mask[None]
    fitted = fit_image(mask.float()[..., None].expand(-1, -1, -1, 3), height, width, batch, mode)
    return fitted[..., :1].movedim(-1, 1)


def _run_hints(cnet, control: torch.Tensor, x_in, x_mask, x_freqs, adaln, seqlens, x_pad_mask, pad_token, scale):
    """diffusers' control branch up to the main layers: (refiner hints, control tokens)."""
    module = cnet.module
    tokens = module.patchify(list(control.unsqueeze(2).unbind(0)), 2, 1)
    tokens = module.control_all_x_embedder[PATCH](torch.cat(tokens, dim=0))
    tokens[torch.cat(x_pad_mask)] = pad_token.to(tokens.dtype)
    tokens = pad_sequence(list(tokens.split(seqlens, dim=0)), batch_first=True, padding_value=0.0)
    refiner_hints = {}
    mode = module.add_control_noise_refiner
    if mode is not None:
        layers = module.control_layers if mode == "control_layers" else module.control_noise_refiner
        for layer in layers:
            tokens = layer(tokens, x_in, x_mask, x_freqs, adaln)
        states = torch.unbind(tokens)
        tokens = states[-1]
        refiner_hints = {place: states[i] * scale for i, place in enumerate(module.control_refiner_layers_places)}
    else:
        for layer in module.control_noise_refiner:
            tokens = layer(tokens, x_mask, x_freqs, adaln)
    return refiner_hints, tokens


def _main_hints(cnet, tokens, unified, unified_mask, unified_freqs, adaln, cap, x_seqlens, cap_seqlens, scale):
    """Yields (main layer index, hint) in order, one control layer at a time: only the control
    state and the current hint are alive (holding all 15 hints would cost ~0.5 GiB at 1024²).
    diffusers' ZImageControlTransformerBlock stacks every skip so far with the state; only the
    newest skip and the state are kept here, which gives the same hints."""
    module = cnet.module
    state = pad_sequence([torch.cat([tokens[i][:x_len], cap[i][:c_len]]) for i, (x_len, c_len) in enumerate(zip(x_seqlens, cap_seqlens))],
                         batch_first=True, padding_value=0.0)
    for place, layer in zip(module.control_layers_places, module.control_layers):
        stacked = layer(state if layer.block_id == 0 else state[None], unified, unified_mask, unified_freqs, adaln)
        hint, state = stacked[-2], stacked[-1]
        yield place, hint * scale


def _full_mask(seqlens, device):
    mask = torch.zeros((len(seqlens), max(seqlens)), dtype=torch.bool, device=device)
    for i, n in enumerate(seqlens):
        mask[i, :n] = True
    return mask


def forward_with_control(m, x_list: list[torch.Tensor], t: torch.Tensor, cap_feats: list[torch.Tensor], controls: list[tuple],
                         record: dict | None = None) -> list[torch.Tensor]:
    with top_level_onloaded(m):
        return _forward_with_control(m, x_list, t, cap_feats, controls, record)


def _forward_with_control(m, x_list, t, cap_feats, controls, record):
    """The transformer's output (like ``m(x_list, t, cap_feats)[0]``) with ControlNet hints added.

    ``controls``: (ZImageControlNet, control input [B, C, h, w] in the compute dtype, strength).
    ``record``, if given, receives the hints ("refiner": per ControlNet, "main": summed)."""
    device = x_list[0].device
    adaln = m.t_embedder(t * m.t_scale).type_as(x_list[0])
    x, cap, x_size, x_pos_ids, cap_pos_ids, x_pad_mask, cap_pad_mask = m.patchify_and_embed(x_list, cap_feats, 2, 1)
    x_seqlens = [len(xi) for xi in x]
    x = m.all_x_embedder[PATCH](torch.cat(x, dim=0))
    x, x_freqs, x_mask, _, _ = m._prepare_sequence(list(x.split(x_seqlens, dim=0)), x_pos_ids, x_pad_mask, m.x_pad_token, None, device)
    x_mask_full = _full_mask(x_seqlens, device)  # the control branch always passes a mask, as diffusers' does

    branches = [(cnet, *_run_hints(cnet, control, x, x_mask_full, x_freqs, adaln, x_seqlens, x_pad_mask, m.x_pad_token, scale), scale)
                for cnet, control, scale in controls]
    if record is not None:
        record["refiner"] = [b[1] for b in branches]
    for i, layer in enumerate(m.noise_refiner):
        x = layer(x, x_mask, x_freqs, adaln)
        for _, refiner_hints, _, _ in branches:
            if i in refiner_hints:
                x = x + refiner_hints[i]

    cap_seqlens = [len(c) for c in cap]
    cap = m.cap_embedder(torch.cat(cap, dim=0))
    cap, cap_freqs, cap_mask, _, _ = m._prepare_sequence(list(cap.split(cap_seqlens, dim=0)), cap_pos_ids, cap_pad_mask, m.cap_pad_token, None, device)
    for layer in m.context_refiner:
        cap = layer(cap, cap_mask, cap_freqs)

    unified, unified_freqs, unified_mask, _ = m._build_unified_sequence(
        x, x_freqs, x_seqlens, None, cap, cap_freqs, cap_seqlens, None, None, None, None, None, False, device)
    unified_mask_full = _full_mask([a + b for a, b in zip(x_seqlens, cap_seqlens)], device)
    streams = [_main_hints(cnet, tokens, unified, unified_mask_full, unified_freqs, adaln, cap, x_seqlens, cap_seqlens, scale)
               for cnet, _, tokens, scale in branches]
    pending = [next(s, None) for s in streams]  # each ControlNet's next (place, hint)
    if record is not None:
        record["main"] = {}
    for i, layer in enumerate(m.layers):
        unified = layer(unified, unified_mask, unified_freqs, adaln)
        for k, item in enumerate(pending):
            if item is not None and item[0] == i:
                unified = unified + item[1]
                if record is not None:
                    record["main"][i] = record["main"].get(i, 0) + item[1]
                pending[k] = next(streams[k], None)
    unified = m.all_final_layer[PATCH](unified, c=adaln)
    return m.unpatchify(list(unified.unbind(dim=0)), x_size, 2, 1, None)
