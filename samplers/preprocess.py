"""Control-image preprocessors that need no model download: canny, gray, scribble.

IMAGE in, IMAGE out ([B, H, W, 3] floats in 0..1). Written with torch ops (no OpenCV dependency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..loaders.errors import ZImageInputError

_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _check_image(image, what: str = "image") -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3:
        raise ZImageInputError(what, f"{getattr(image, 'shape', type(image).__name__)}", "an IMAGE [batch, height, width, 3]", "connect a Load Image node")


def gray(image: torch.Tensor) -> torch.Tensor:
    """Luminance, repeated on three channels."""
    _check_image(image)
    luma = (image[..., :3].float() * _LUMA).sum(-1, keepdim=True)
    return luma.expand(-1, -1, -1, 3).contiguous()


def scribble(image: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """White strokes on black: pixels darker than ``threshold`` become lines (a drawing on paper)."""
    _check_threshold("threshold", threshold)
    return (gray(image) < threshold).float()


def _check_threshold(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ZImageInputError(name, repr(value), "a value in 0..1", "use 0.5")


def canny(image: torch.Tensor, low_threshold: float = 0.2, high_threshold: float = 0.5) -> torch.Tensor:
    """Canny edges (white on black). The thresholds are fractions of the image's strongest gradient."""
    _check_threshold("low_threshold", low_threshold)
    _check_threshold("high_threshold", high_threshold)
    if low_threshold > high_threshold:
        raise ZImageInputError("low_threshold", f"{low_threshold} above high_threshold {high_threshold}", "low ≤ high", "swap the two values")
    luma = gray(image)[..., :1].movedim(-1, 1)  # [B, 1, H, W]
    coords = torch.arange(5, dtype=torch.float32) - 2
    g = torch.exp(-(coords ** 2) / (2 * 1.4 ** 2))
    g = (g / g.sum())
    blurred = F.conv2d(F.pad(luma, (2, 2, 2, 2), mode="replicate"), (g[:, None] * g[None, :])[None, None])
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    padded = F.pad(blurred, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel[None, None])
    gy = F.conv2d(padded, sobel.t()[None, None])
    magnitude = torch.hypot(gx, gy)
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    magnitude = magnitude / peak
    # non-maximum suppression along the gradient direction (quantised to 0°, 45°, 90°, 135°)
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180
    direction = ((angle + 22.5) // 45).long() % 4
    padded_mag = F.pad(magnitude, (1, 1, 1, 1))
    h, w = magnitude.shape[-2:]

    def shifted(dy, dx):
        return padded_mag[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    offsets = [((0, 1), (0, -1)), ((1, 1), (-1, -1)), ((1, 0), (-1, 0)), ((1, -1), (-1, 1))]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for d, (a, b) in enumerate(offsets):
        keep |= (direction == d) & (magnitude >= shifted(*a)) & (magnitude >= shifted(*b))
    thin = magnitude * keep
    strong = thin >= high_threshold
    weak = thin >= low_threshold
    for _ in range(h + w):  # hysteresis: grow strong edges through connected weak ones
        grown = weak & (F.max_pool2d(strong.float(), 3, 1, 1) > 0)
        if torch.equal(grown, strong):
            break
        strong = grown
    return strong.float().movedim(1, -1).expand(-1, -1, -1, 3).contiguous()
