"""Text features as ComfyUI CONDITIONING."""

from __future__ import annotations

from ..loaders.errors import ZImageInputError
from ..loaders.text_encoder import ZImageTextEncoder, encode_prompts


def encode_to_conditioning(encoder: ZImageTextEncoder, text: str) -> list:
    """``[[features [1, L, hidden], {}]]``: the native CONDITIONING layout, valid tokens only."""
    if not isinstance(text, str):
        raise ZImageInputError("text", type(text).__name__, "a string (an empty one is fine)", "type the prompt into the node")
    (features,) = encode_prompts(encoder, [text])
    return [[features[None], {}]]
