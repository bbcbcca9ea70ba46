"""The Qwen3-4B text encoder and its tokenizer, and prompt encoding as Z-Image was trained.

Files: ComfyUI's single file ``qwen_3_4b.safetensors`` (keys ``model.layers.N…``, no config
inside: Qwen3-4B's constants are carried here and the sizes are read from the shapes, so small
test encoders load through the same path) or a diffusers folder (``text_encoder/``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

from .dtypes import compute_dtype_for, parse_weight_dtype
from .errors import ZImageInputError
from .model_files import describe_foreign_keys, strip_prefix
from .compute_dtype import check_finite, choose, plain_dtype, set_compute_dtype
from .gguf_files import llama_cpp_to_transformers
from .residency import pick_device
from .quantized import install
from .safetensors_io import diffusers_component_folder, require_file, stored_dtype
from .weight_files import read_weights

log = logging.getLogger("zimage")

WHAT = "Z-Image text encoder file (Qwen3-4B)"
PROMPT_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
MAX_TOKENS = 512
PAD_TOKEN_ID = 151643
FEATURE_LAYER = -2  # Z-Image reads the second-to-last hidden state

# Qwen3-4B values that cannot be read from tensor shapes.
_QWEN3_4B_CONSTANTS = dict(
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=40960, hidden_act="silu",
    tie_word_embeddings=True, attention_bias=False, pad_token_id=PAD_TOKEN_ID,
)


@dataclass
class ZImageTextEncoder:
    model: Qwen3Model
    tokenizer: object
    source: str
    compute_dtype: torch.dtype = torch.float32

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device  # not embed_tokens.weight: a quantised table has a meta stand-in


def _has_tokenizer_files(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "vocab.json")) and os.path.isfile(os.path.join(folder, "merges.txt"))


def load_tokenizer(path: str):
    """A Qwen2 BPE tokenizer from a folder holding vocab.json and merges.txt (or its tokenizer/ subfolder)."""
    for candidate in (path, os.path.join(path, "tokenizer")):
        if _has_tokenizer_files(candidate):
            return AutoTokenizer.from_pretrained(candidate, local_files_only=True)
    found = "a folder" if os.path.isdir(path) else "no folder"
    raise ZImageInputError(
        "tokenizer folder", f"{found} '{path}' without vocab.json and merges.txt", "a Qwen2/Qwen3 tokenizer folder",
        "inside ComfyUI the bundled comfy/text_encoders/qwen25_tokenizer is used; outside it, point at a folder with "
        "vocab.json and merges.txt (a diffusers folder's tokenizer/)",
    )


def find_tokenizer(candidates: list[tuple[str, str | None]], how_to_fix: str) -> str:
    """The first of the (label, folder) places that holds the tokenizer files; else an error listing
    every place looked at."""
    for _, folder in candidates:
        if folder and (_has_tokenizer_files(folder) or _has_tokenizer_files(os.path.join(folder, "tokenizer"))):
            return folder
    looked = "; ".join(f"{label}: {repr(folder) + (' has no vocab.json and merges.txt' if os.path.isdir(folder) else ' does not exist') if folder else 'not given'}"
                       for label, folder in candidates)
    raise ZImageInputError("tokenizer", f"no Qwen tokenizer files (looked at: {looked})", "a folder with vocab.json and merges.txt", how_to_fix)


def load_text_encoder(path: str, tokenizer_path: str, weight_dtype: str | torch.dtype = "default", compute_dtype: str | torch.dtype = "auto",
                      device: torch.device | None = None) -> ZImageTextEncoder:
    """Qwen3-4B and its tokenizer; ``compute_dtype`` "auto" is bf16 where ``device`` has it, else fp32
    (Qwen3's residual stream exceeds fp16's range), and fp32 for an fp32 file."""
    requested = parse_weight_dtype(weight_dtype)
    require_file(path, WHAT)
    if os.path.isdir(path):
        folder = diffusers_component_folder(path, "text_encoder", WHAT, "qwen_3_4b.safetensors")
        model = Qwen3Model.from_pretrained(folder, torch_dtype=compute_dtype_for(requested or stored_dtype(folder)), local_files_only=True)
    else:
        model = _load_single_file(path, requested)
    storage = plain_dtype(model)
    compute = choose(storage, compute_dtype, device or pick_device(), role="text_encoder")
    if compute != storage:
        set_compute_dtype(model, storage, compute)
    return ZImageTextEncoder(model=model.eval().requires_grad_(False), tokenizer=load_tokenizer(tokenizer_path), source=path, compute_dtype=compute)


def _load_single_file(path: str, requested: torch.dtype | None) -> Qwen3Model:
    weights = read_weights(path, WHAT)
    if weights.container == "gguf":
        weights = weights.renamed(llama_cpp_to_transformers)
        prefix = ""
    else:
        names = weights.names()
        prefix = strip_prefix([k for k in names if not k.startswith("lm_head.")], ("model.", "text_model.model.", "qwen3_4b.transformer.model."))
        weights = weights.renamed(lambda k: k[len(prefix):] if k.startswith(prefix) and not k.startswith("lm_head.") else None)
    names = set(weights.names())
    if "embed_tokens.weight" not in names or "layers.0.self_attn.q_norm.weight" not in names:
        keys = sorted(names)
        looks_like, use_instead = describe_foreign_keys(keys)
        if "Qwen3" in looks_like:
            looks_like = "a text encoder that is not Qwen3 (no q_norm in its attention)"
        raise ZImageInputError(WHAT, f"'{os.path.basename(path)}' looks like {looks_like}", "Qwen3-4B (qwen_3_4b.safetensors)", f"use {use_instead}")
    embed = weights.plain.get("embed_tokens.weight")
    file_dtype = embed.dtype if embed is not None and embed.dtype.is_floating_point else torch.bfloat16
    if weights.quantized and requested is not None:
        compute = compute_dtype_for(requested)
        weights.plain.update({f"{k}.weight": w.dequantize(compute) for k, w in weights.quantized.items()})
        weights.quantized = {}
    dtype = compute_dtype_for(requested or file_dtype) if not weights.quantized else torch.bfloat16
    state = {k: v.to(dtype) for k, v in weights.plain.items()}
    shapes = {**state, **{f"{k}.weight": torch.empty(w.shape, device="meta") for k, w in weights.quantized.items()}}
    config = _config_from_shapes(shapes)
    with torch.device("meta"):
        model = Qwen3Model(config)
    missing = sorted(set(model.state_dict()) - set(shapes))
    if missing:
        raise ZImageInputError(WHAT, f"'{os.path.basename(path)}' without {len(missing)} tensors (e.g. {missing[:3]})", "a complete Qwen3-4B", "download the file again")
    install(model, weights.quantized, state, dtype, os.path.basename(path))
    expected = set(model.state_dict())
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
    # rotary frequencies are a non-persistent buffer: build them for real (they were on meta)
    model.rotary_emb = type(model.rotary_emb)(config=config)
    model.zimage_quantization = weights.describe()
    if weights.quantized:
        log.info("Z-Image text encoder %s: quantised layers %s", os.path.basename(path), weights.describe())
    return model


def _layer_count(names) -> int:
    return 1 + max(int(m.group(1)) for n in names if (m := re.match(r"layers\.(\d+)\.", n)))


def _config_from_shapes(state: dict[str, torch.Tensor]) -> Qwen3Config:
    vocab, hidden = state["embed_tokens.weight"].shape
    head_dim = state["layers.0.self_attn.q_norm.weight"].shape[0]
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, head_dim=head_dim,
        intermediate_size=state["layers.0.mlp.gate_proj.weight"].shape[0],
        num_hidden_layers=_layer_count(state),
        num_attention_heads=state["layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
        num_key_value_heads=state["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        **_QWEN3_4B_CONSTANTS,
    )
    config._attn_implementation = "sdpa"
    return config


def tokenize_prompt(tokenizer, prompt: str) -> torch.Tensor:
    """Token ids of one prompt in Z-Image's template (built here: the tokenizer's own chat
    template would add a system prompt Z-Image never saw), at most 512 tokens."""
    ids = tokenizer(PROMPT_TEMPLATE.format(prompt), add_special_tokens=False).input_ids
    return torch.tensor(ids[:MAX_TOKENS], dtype=torch.long)


@torch.no_grad()
def encode_prompts(encoder: ZImageTextEncoder, prompts: list[str]) -> list[torch.Tensor]:
    """Caption features ``[L_i, hidden]`` (float32, on the CPU) for each prompt: the second-to-last
    hidden state of its tokens. Prompts run one at a time, so no padding token is ever seen."""
    features = []
    for prompt in prompts:
        ids = tokenize_prompt(encoder.tokenizer, prompt).to(encoder.device)[None]
        out = encoder.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        hidden = out.hidden_states[FEATURE_LAYER][0]
        check_finite(hidden, 0, 1, encoder.compute_dtype, "text encoder")
        features.append(hidden.float().cpu())
    return features
