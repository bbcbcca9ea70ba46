"""Prompt features for the transformer, from ComfyUI CONDITIONING.

CONDITIONING is ``[[features [B, L, C], {...}], ...]``. Our text encoder makes it with only the valid
tokens; ComfyUI's CLIPTextEncode with a Qwen3-4B clip may also carry an ``attention_mask``, in which
case only the unmasked tokens are kept (Z-Image never sees padding).
"""

from __future__ import annotations

import torch

from ..loaders.errors import ZImageInputError


def features_from_conditioning(conditioning, feature_dim: int, batch_size: int, what: str = "positive") -> list[torch.Tensor]:
    """One ``[L_i, C]`` float32 tensor per image in the batch."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ZImageInputError(what, f"{type(conditioning).__name__} {conditioning!r:.60}", "CONDITIONING from a text encode node", "connect a CLIP Text Encode with the Z-Image CLIP (Load CLIP, type lumina2)")
    features: list[torch.Tensor] = []
    for entry in conditioning:
        tensor, extra = entry[0], (entry[1] if len(entry) > 1 else {})
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
            raise ZImageInputError(what, f"a conditioning tensor of shape {getattr(tensor, 'shape', None)}", "[batch, tokens, 2560]", "connect a CLIP Text Encode with the Z-Image CLIP (Load CLIP, type lumina2)")
        if tensor.shape[-1] != feature_dim:
            raise ZImageInputError(
                what, f"text features of size {tensor.shape[-1]}", f"{feature_dim} (the Qwen3-4B text encoder this transformer was trained with)",
                "encode the prompt with the Qwen3-4B text encoder (qwen_3_4b.safetensors), not a CLIP/T5/other encoder",
            )
        mask = extra.get("attention_mask") if isinstance(extra, dict) else None
        for b in range(tensor.shape[0]):
            row = tensor[b]
            if mask is not None:
                row = row[mask[b].to(torch.bool).reshape(-1)[: row.shape[0]]]
            features.append(row.float())
    if len(features) == 1:
        return features * batch_size
    if len(features) != batch_size:
        raise ZImageInputError(what, f"{len(features)} prompts", f"1 or {batch_size} (the latent's batch size)", "encode one prompt, or one per image in the batch")
    return features
