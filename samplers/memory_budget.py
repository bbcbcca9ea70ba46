"""Will this run fit? An estimate of the peak memory of a sampling run or a VAE pass, made before
anything is allocated, and a clear refusal naming the inputs and the largest size that fits.

The activation figures are per token (transformer) and per pixel (VAE), read off traces of the
real modules under FakeTensorMode + MemTracker (tests/test_memory_budget.py holds the estimate to
within 10 % of those traces):
- transformer block: (3 · ffn_hidden + 8 · dim) activations per token — 122 KB per token in bf16
  for Z-Image (61,440 values), image tokens (h/2 · w/2 per latent) plus up to 512 caption tokens;
- FLUX VAE decode: 768 values per output pixel, encode 643 per input pixel (fp32: 3 KB / 2.5 KB); a
  tiled decode holds one tile's activations plus the decoded tiles and the stitched picture.

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
_SAFETY = 1.10  # on top of figures within 10 % of the traced peaks (measured: within 2 %), so the estimate stays above them


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
    values = VAE_DECODE_VALUES_PER_PIXEL if decode else VAE_ENCODE_VALUES_PER_PIXEL
    count = batch * height * width * values
    if tile_size and max(height, width) > tile_size:
        # diffusers' tiled pass runs one tile of every image of the batch at a time; a decode keeps each
        # decoded tile (3 channels; the overlaps make them (4/3)² of the picture) and then stitches them
        # into rows and the picture: 16/3 values per picture pixel beside the last tile's activations,
        # 34/3 at the end (traced: tests/test_memory_budget.py)
        tile = batch * tile_size * tile_size * values
        pixels = batch * height * width
        count = max(tile + 16 * pixels // 3, 34 * pixels // 3) if decode else tile
    need = count * _element_size(vae.dtype)
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



# Host-side data a node builds before any sampler runs (a latent of zeros, a prompt list, a set of
# prompt encodings) may take at most this share of the host's available memory: ComfyUI caches node
# outputs, and the rest of the run still needs room.
HOST_SHARE = 0.5
TEXT_FEATURE_BYTES_PER_TOKEN = 2560 * 4  # Qwen3-4B's hidden size, CONDITIONING in float32
PROMPT_LIST_ITEM_OVERHEAD = 256  # Python's str and int objects and list slots of one item


def host_budget() -> int | None:
    available = host_available()
    return None if available is None else int(available * HOST_SHARE)


def check_latent_fits(width: int, height: int, batch: int) -> None:
    """Refuse, before the zeros are made, a latent the host cannot hold, naming the largest batch that fits."""
    budget = host_budget()
    per_image = 16 * (height // 8) * (width // 8) * 4
    if budget is None or per_image * batch <= budget:
        return
    fits = budget // per_image
    hint = f"batch_size {fits} fits at this size" if fits else f"even one {width}×{height} latent does not fit; {_largest_square(lambda s: 16 * (s // 8) ** 2 * 4, budget)}² does"
    raise ZImageInputError("width, height, batch_size", f"{width}×{height} × batch {batch}: a latent of ~{per_image * batch / GIB:.1f} GiB "
                           f"({budget / GIB:.1f} GiB of host memory may go to it)", "a latent that fits this machine",
                           f"lower batch_size or the size ({hint}). Nothing was allocated")


def text_tokens_upper_bound(text: str) -> int:
    """Tokens a prompt can take in Z-Image's template: at most one per byte (byte-level BPE), at most 512."""
    return min(CAPTION_TOKENS, len(text.encode("utf-8")) + 13)


def check_prompts_fit(texts: list[str], what: str, repeat: int = 1, tokens_of=text_tokens_upper_bound,
                      bytes_per_token: int = TEXT_FEATURE_BYTES_PER_TOKEN) -> None:
    """Refuse ``texts`` × ``repeat`` prompts whose encodings (one per item: what ComfyUI keeps when it
    runs a text encoder once per list item) cannot fit the host, naming the largest count that does.
    Checked before the list is built: ``repeat`` multiplies the sum, not the list."""
    budget = host_budget()
    if budget is None or not texts:
        return
    total, counted = 0, len(texts)
    for index, text in enumerate(texts):
        total += tokens_of(text) * bytes_per_token + len(text.encode("utf-8")) + PROMPT_LIST_ITEM_OVERHEAD
        if total > budget:  # enough to know it does not fit; the mean so far sizes the answer
            counted = index + 1
            break
    mean = total / counted
    need = mean * len(texts) * repeat
    if need <= budget:
        return
    raise ZImageInputError(what, f"{len(texts)} prompts" + (f" × repeat {repeat}" if repeat > 1 else "")
                           + f", whose encodings would need ~{need / GIB:.1f} GiB ({budget / GIB:.1f} GiB of host memory may go to them)",
                           f"at most about {int(budget // mean)} prompts of this length in one list",
                           "split the list into several queued prompts, or lower repeat. Nothing was encoded")
