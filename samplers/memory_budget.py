"""Will this run fit? An estimate of the peak memory of a sampling run or a VAE pass, made before
anything is allocated, and a clear refusal naming the inputs and the largest size that fits.

The activation figures are per token (transformer) and per pixel (VAE), read off traces of the
real modules under FakeTensorMode + MemTracker (tests/test_memory_budget.py holds the estimate to
within 10 % of those traces):
- transformer block: (3 · ffn_hidden + 8 · dim) activations per token — 122 KB per token in bf16
  for Z-Image (61,440 values), image tokens (h/2 · w/2 per latent) plus up to 512 caption tokens;
- FLUX VAE decode: 768 values per output pixel, encode 643 per input pixel (fp32: 3 KB / 2.5 KB).

What is compared: on a GPU, the card's whole memory (the pack and ComfyUI move other models off the
card when a run needs the room, so a run that fits the card runs); on the CPU (and Apple's shared
memory), the host's available memory, since the weights are already loaded.
"""

from __future__ import annotations

import torch

from ..loaders import residency
from ..loaders.errors import ZImageInputError

GIB = 2**30
CAPTION_TOKENS = 512
VAE_DECODE_VALUES_PER_PIXEL = 768
VAE_ENCODE_VALUES_PER_PIXEL = 643
_SAFETY = 1.10  # the estimate is within 10 % of the traced peaks


def capacity(device: torch.device) -> int | None:
    """Bytes a run may use on ``device``; None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.95)
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory())
        except (AttributeError, RuntimeError):
            return None
    return host_available()


def host_available() -> int | None:
    """MemAvailable of /proc/meminfo (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def weights_on_device(module, mode: str) -> int:
    if mode == "full":
        return residency.module_bytes(module)
    if mode == "block_offload":
        return residency.resident_bytes(module) + 2 * residency.block_bytes(module)
    largest_leaf = max((residency.module_bytes(m) for m in module.modules() if isinstance(m, torch.nn.Linear)), default=0)
    return residency.resident_bytes(module) + 2 * largest_leaf


def sampling_bytes(transformer, batch: int, latent_h: int, latent_w: int, cfg: bool, mode: str | None = None,
                   device: torch.device | None = None) -> int:
    """The device peak of one sampling run: weights as ``mode`` holds them (none on the CPU: they are
    loaded already), the transformer's activations (doubled under CFG), the ControlNets' branch and
    weights, and the sampler's float32 latents."""
    module, dtype = transformer.module, transformer.compute_dtype
    mode = mode or getattr(transformer, "memory_mode", "auto")
    if mode == "auto":
        mode = "full"
    effective = batch * (2 if cfg else 1)
    need = residency.transformer_activation_bytes(module, effective, latent_h, latent_w, CAPTION_TOKENS, dtype)
    on_cpu = device is not None and device.type == "cpu"
    if not on_cpu:
        need += weights_on_device(module, mode)
    for spec in getattr(transformer, "controls", ()):
        cnet = spec.controlnet
        need += residency.transformer_activation_bytes(cnet.module, effective, latent_h, latent_w, 0, dtype)
        if not on_cpu:
            need += 2 * residency.block_bytes(cnet.module) if cnet.offload else residency.module_bytes(cnet.module)
    need += 4 * batch * 16 * latent_h * latent_w * 4  # x, noise, velocity, x0 in float32
    return int(need * _SAFETY)


def check_sampling_fits(transformer, batch: int, latent_h: int, latent_w: int, cfg: bool, device: torch.device) -> None:
    """Refuse, before anything is allocated, a run that cannot fit on ``device``."""
    cap = capacity(device)
    if cap is None:
        return
    chosen = getattr(transformer, "memory_mode", "auto")
    modes = ("full", "block_offload", "leaf_offload") if chosen == "auto" else (chosen,)

    def need_at(b, h, w, modes=modes):  # auto runs in the first mode that fits
        return min(sampling_bytes(transformer, b, h, w, cfg, m, device) for m in modes)

    need = need_at(batch, latent_h, latent_w)
    if need <= cap:
        return
    side = _largest_square(lambda s: need_at(batch, s // 8, s // 8), cap)
    hints = []
    if device.type != "cpu" and chosen == "full" and sampling_bytes(transformer, batch, latent_h, latent_w, cfg, "block_offload", device) <= cap:
        hints.append("or set the Transformer Loader's memory_mode to block_offload (it fits then)")
    if batch > 1 and need_at(1, latent_h, latent_w) <= cap:
        hints.append("or lower batch_size (batch 1 fits)")
    size = f"{latent_w * 8}×{latent_h * 8}" + (f" × batch {batch}" if batch > 1 else "") + (" with CFG" if cfg else "")
    fits = f"{side}×{side} fits" if side else "no size fits"
    raise ZImageInputError(
        "latent_image (width, height, batch_size)",
        f"{size}, which needs ~{need / GIB:.1f} GiB on {device.type} ({cap / GIB:.1f} GiB available); {fits}",
        "a size that fits this machine",
        "lower width and height" + ("".join(f", {h}" for h in hints)) + ". Nothing was allocated; the next prompt runs as usual",
    )


def vae_bytes(vae, height: int, width: int, batch: int, tile_size: int, decode: bool, device: torch.device) -> int:
    if tile_size and max(height, width) > tile_size:
        height = width = tile_size
        batch = 1  # diffusers' tiled pass decodes one tile of one image at a time
    values = VAE_DECODE_VALUES_PER_PIXEL if decode else VAE_ENCODE_VALUES_PER_PIXEL
    need = batch * height * width * values * _element_size(vae.dtype)
    if device.type != "cpu":
        need += residency.module_bytes(vae.model)
    return int(need * _SAFETY)


def check_vae_fits(vae, height: int, width: int, batch: int, tile_size: int, decode: bool, device: torch.device) -> None:
    cap = capacity(device)
    if cap is None:
        return
    need = vae_bytes(vae, height, width, batch, tile_size, decode, device)
    if need <= cap:
        return
    tile = next((t for t in (1024, 768, 512, 256) if vae_bytes(vae, height, width, batch, t, decode, device) <= cap), 0)
    how = f"set tile_size to {tile} (it fits then)" if tile else "use a smaller image"
    if batch > 1:
        how += ", or fewer images per batch"
    raise ZImageInputError(
        "tile_size" if tile else "image size",
        f"VAE {'decode' if decode else 'encode'} of {width}×{height}" + (f" × {batch}" if batch > 1 else "")
        + f" needs ~{need / GIB:.1f} GiB on {device.type} ({cap / GIB:.1f} GiB available)",
        "a pass that fits this machine", how + ". Nothing was allocated",
    )


def _largest_square(need_at, cap: int) -> int:
    """The largest side (a multiple of 64 px, up to 16384) whose run fits in ``cap``."""
    best = 0
    low, high = 1, 16384 // 64
    while low <= high:
        mid = (low + high) // 2
        if need_at(mid * 64) <= cap:
            best, low = mid * 64, mid + 1
        else:
            high = mid - 1
    return best

