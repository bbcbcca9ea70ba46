"""Reading Z-Image LoRA files of every trainer's naming, and resolving their keys onto the model.

Formats (detected from the keys): ai-toolkit (``diffusion_model.…lora_A/B``), musubi-tuner raw
(``lora_unet_layers_N_attention_to_q.lora_down/up/alpha``), musubi converted for ComfyUI (fused
``attention_qkv``), ComfyUI native names (``attention.qkv``, ``attention.out``), diffusers / PEFT
(``transformer.…lora_A.weight``, with or without ``.default``), DiffSynth-Studio bare ``layers.N…``,
LyCORIS LoKr and LoHa. Underscore-flattened names are resolved by matching against the model's own
module names, never by turning underscores back into dots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .errors import ZImageInputError
from .safetensors_io import open_safetensors

WHAT = "LoRA file"

# key suffix -> role, longest first when matching
_SUFFIXES = {
    ".lora_A.default.weight": "down", ".lora_B.default.weight": "up",
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha",
    ".lokr_w1": "lokr_w1", ".lokr_w2": "lokr_w2", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b",
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b", ".hada_w2_a": "hada_w2_a", ".hada_w2_b": "hada_w2_b",
    ".diff": "diff",
}
_SUFFIX_ORDER = sorted(_SUFFIXES, key=len, reverse=True)
_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "unet.", "model.",
             "lora_unet__", "lora_unet_", "lycoris_", "lora_transformer__", "lora_transformer_")  # some trainers join with two underscores

# Other model families, by key fragments, for a clear refusal.
_FAMILIES = [
    ("a FLUX LoRA", ("double_blocks", "single_blocks", "single_transformer_blocks")),
    ("an SDXL / SD1.5 LoRA", ("input_blocks", "output_blocks", "down_blocks", "up_blocks", "lora_te1_", "lora_te2_", "lora_te_", "text_model")),
    ("an SD3 LoRA", ("joint_blocks",)),
    ("a Qwen-Image LoRA", ("img_mlp", "txt_mlp", "img_mod")),
    ("a Wan video LoRA", ("self_attn", "cross_attn")),
]


@dataclass
class LoraGroup:
    """The tensors of one adapted layer, by role (down/up/alpha, lokr_*, hada_*, diff)."""

    module_key: str
    tensors: dict = field(default_factory=dict)
    source_keys: list = field(default_factory=list)
    # musubi-tuner's own LoKr (networks.lokr) scales a full lokr_w2 by alpha / max(w2.shape), where
    # LyCORIS uses 1; its files carry an int64 ``lokr_factor`` tensor and an ``ss_lokr_factor`` header
    musubi_lokr: bool = False

    @property
    def kind(self) -> str:
        roles = set(self.tensors)
        if {"up", "down"} <= roles:
            return "lora"
        if any(r.startswith("lokr_w1") for r in roles) and any(r.startswith("lokr_w2") for r in roles):
            return "lokr"
        if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= roles:
            return "loha"
        if "diff" in roles:
            return "diff"
        return "incomplete"


@dataclass
class LoraFile:
    path: str
    groups: list[LoraGroup]
    unknown_keys: list[str]
    format: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def read_lora(path: str) -> LoraFile:
    """Group a LoRA file's tensors by layer (on the CPU, float32 math later). A file that keeps its
    alpha in diffusers' header metadata instead of per-layer ``alpha`` tensors gets those alphas."""
    with open_safetensors(path, WHAT) as handle:
        header = handle.metadata() or {}
        keys = list(handle.keys())
        groups: dict[str, LoraGroup] = {}
        unknown = []
        for key in keys:
            if key == MUSUBI_LOKR_MARKER:
                continue
            suffix = next((s for s in _SUFFIX_ORDER if key.endswith(s)), None)
            if suffix is None:
                unknown.append(key)
                continue
            module_key = strip_lora_prefixes(key[: -len(suffix)])
            group = groups.setdefault(module_key, LoraGroup(module_key))
            group.tensors[_SUFFIXES[suffix]] = handle.get_tensor(key)
            group.source_keys.append(key)
    if not groups:
        raise ZImageInputError(
            WHAT, f"'{os.path.basename(path)}' with no LoRA tensors (keys like {sorted(keys)[:3]})",
            "lora_A/lora_B, lora_down/lora_up, lokr_* or hada_* tensors", "pick a LoRA file (a full model goes into the loaders)",
        )
    adapter = _adapter_metadata(header, os.path.basename(path))
    if adapter is not None:
        for group in groups.values():
            _alpha_from_metadata(group, adapter)
    _mark_musubi_lokr(list(groups.values()), unknown, MUSUBI_LOKR_MARKER in keys, "ss_lokr_factor" in header)
    return LoraFile(path, list(groups.values()), unknown, _guess_format(keys))


MUSUBI_LOKR_MARKER = "lokr_factor"


def _mark_musubi_lokr(groups: list[LoraGroup], unknown: list[str], has_marker: bool, has_header: bool) -> None:
    """A musubi-tuner LoKr file: its LoKr layers take musubi's scale; its ``lokr_factor`` tensor (no weight)
    is listed with the first LoKr layer, or as not applied when there is none."""
    lokr = [g for g in groups if g.kind == "lokr"]
    for group in lokr if (has_marker or has_header) else []:
        group.musubi_lokr = True
    if has_marker:
        (lokr[0].source_keys if lokr else unknown).append(MUSUBI_LOKR_MARKER)


ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' save_lora_weights (lora_base.LORA_ADAPTER_METADATA_KEY)


def _adapter_metadata(header: dict, name: str) -> dict | None:
    """The transformer's PEFT LoraConfig that diffusers writes into the header as JSON (its fields under
    ``transformer.`` when saved from a pipeline, bare when saved from the model); None when absent."""
    text = header.get(ADAPTER_METADATA_KEY)
    if not text:
        return None
    from .json_text import parse_json

    raw = parse_json(text, WHAT, f"the '{ADAPTER_METADATA_KEY}' header of '{name}'", "save the LoRA again, or remove the damaged header")
    if not isinstance(raw, dict):
        raise ZImageInputError(WHAT, f"'{name}' whose '{ADAPTER_METADATA_KEY}' is a {type(raw).__name__}", "a JSON object (a PEFT LoraConfig)", "save the LoRA again")
    config = {k[len("transformer."):]: v for k, v in raw.items() if k.startswith("transformer.")} or raw
    if config.get("use_dora"):
        raise ZImageInputError(WHAT, f"'{name}', a DoRA LoRA (use_dora in its header)", "a plain LoRA, LoKr or LoHa",
                               "DoRA's magnitude vectors are not applied by this pack: use a LoRA saved without DoRA")
    return config


def _pattern_value(patterns: dict, module_key: str):
    """PEFT's alpha_pattern / rank_pattern lookup: a pattern matches a module whose dotted name ends in it."""
    import re

    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module_key):
            return value
    return None


def _alpha_from_metadata(group: LoraGroup, config: dict) -> None:
    """A plain LoRA layer without its own alpha tensor takes lora_alpha (or its alpha_pattern entry)
    from the header; rsLoRA's scale alpha/√r is written as the equivalent alpha·√r / r."""
    if group.kind != "lora" or "alpha" in group.tensors or config.get("lora_alpha") is None:
        return
    alpha = _pattern_value(config.get("alpha_pattern"), group.module_key)
    alpha = float(config["lora_alpha"] if alpha is None else alpha)
    if config.get("use_rslora"):
        alpha *= group.tensors["down"].shape[0] ** 0.5
    group.tensors["alpha"] = torch.tensor(alpha)


def strip_lora_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def _guess_format(keys: list[str]) -> str:
    sample = " ".join(keys[:50])
    if "lokr_" in sample:
        return "LyCORIS LoKr"
    if "hada_" in sample:
        return "LyCORIS LoHa"
    if "lora_unet_" in sample:
        return "musubi-tuner (ComfyUI fused qkv)" if "attention_qkv" in sample else "musubi-tuner / kohya"
    if ".attention.qkv." in sample:
        return "ComfyUI native names"
    if "diffusion_model." in sample:
        return "ai-toolkit"
    if "transformer." in sample or "base_model.model." in sample:
        return "diffusers / PEFT"
    return "DiffSynth-Studio (bare keys)"


@dataclass(frozen=True)
class Target:
    """A model weight (or a row range of it, for fused qkv LoRAs)."""

    param: str
    rows: tuple[int, int] | None = None


def target_table(module: torch.nn.Module) -> dict[str, list[Target]]:
    """Every name a LoRA may use for a Linear of the model -> the weights it means.

    Dotted names in diffusers and in ComfyUI spelling, each also lower-cased and underscore-flattened."""
    dotted: dict[str, list[Target]] = {}
    linears = {name: mod for name, mod in module.named_modules() if isinstance(mod, torch.nn.Linear)}
    for name in linears:
        dotted[name] = [Target(f"{name}.weight")]
        comfy = (name.replace("all_x_embedder.2-1", "x_embedder").replace("all_final_layer.2-1", "final_layer")
                 .replace("attention.to_out.0", "attention.out"))
        dotted.setdefault(comfy, [Target(f"{name}.weight")])
        if name.endswith("attention.to_q"):
            base = name[: -len(".to_q")]
            size = linears[name].out_features
            sizes = [size, linears[f"{base}.to_k"].out_features, linears[f"{base}.to_v"].out_features]
            starts = [0, sizes[0], sizes[0] + sizes[1]]
            dotted[f"{base}.qkv"] = [Target(f"{base}.to_{p}.weight", (s, s + n)) for p, s, n in zip("qkv", starts, sizes)]
    table = {}
    for name, targets in dotted.items():
        for alias in (name, name.lower(), name.replace(".", "_").lower()):
            table.setdefault(alias, targets)
    return table


def resolve(group: LoraGroup, table: dict[str, list[Target]]) -> list[Target] | None:
    key = group.module_key
    return table.get(key) or table.get(key.lower()) or table.get(key.replace(".", "_").lower())


def match_groups(lora: LoraFile, locate) -> tuple[list, list[str], list[tuple[str, str]]]:
    """Every group of ``lora`` matched onto a model: ``locate(group)`` gives (target, the weight shape the
    group must fit) or None. Returns ([(group, target)], keys applied, [(key, why not applied)]); a file of
    which nothing matches is refused (naming another model family when it looks like one)."""
    resolved, applied, not_applied = [], [], [(k, "unrecognised tensor name") for k in lora.unknown_keys]
    for group in lora.groups:
        found = None if group.kind == "incomplete" else locate(group)
        if group.kind == "incomplete":
            reason = f"incomplete LoRA layer (has only {sorted(group.tensors)})"
        elif found is None:
            reason = "no Z-Image layer of that name"
        elif found[1] is None or tuple(delta_shape(group)) != tuple(found[1]):
            reason = f"shape {tuple(delta_shape(group))} does not fit the model's {found[1]} (a LoRA for another model size?)"
        else:
            resolved.append((group, found[0]))
            applied += group.source_keys
            continue
        not_applied += [(k, reason) for k in group.source_keys]
    if not resolved:
        keys = [k for g in lora.groups for k in g.source_keys] + lora.unknown_keys
        other = looks_like_other_family(keys)
        found = f"'{lora.name}' looks like {other}" if other else f"'{lora.name}' with no key that matches a Z-Image layer (e.g. {keys[:2]})"
        raise ZImageInputError(WHAT, found, "a LoRA trained for Z-Image (Turbo or Base)", "pick a Z-Image LoRA; LoRAs of other model families do not apply")
    return resolved, applied, not_applied


def looks_like_other_family(keys: list[str]) -> str | None:
    for looks_like, fragments in _FAMILIES:
        if any(f in k for k in keys for f in fragments):
            return looks_like
    return None


def lora_factors(group: LoraGroup, rows: tuple[int, int] | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up, down, scale) of a plain LoRA group (float32): its delta is scale · up @ down."""
    up = group.tensors["up"].to(device=device, dtype=torch.float32).flatten(1)
    down = group.tensors["down"].to(device=device, dtype=torch.float32).flatten(1)
    alpha = float(group.tensors["alpha"]) if "alpha" in group.tensors else None
    scale = alpha / down.shape[0] if alpha is not None else 1.0
    return (up if rows is None else up[rows[0]: rows[1]]), down, scale


def group_delta(group: LoraGroup, rows: tuple[int, int] | None = None, device=None) -> torch.Tensor:
    """The weight change of one group at strength 1 (float32), optionally only some output rows."""
    kind = group.kind
    if kind == "lora":
        up, down, scale = lora_factors(group, rows, device)
        return (up * scale) @ down
    t = {k: v.to(device=device, dtype=torch.float32) for k, v in group.tensors.items()}
    alpha = float(t["alpha"]) if "alpha" in t else None
    if kind == "lokr":
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        delta = torch.kron(w1, w2) * lokr_scale(group)
    elif kind == "loha":
        scale = alpha / t["hada_w1_b"].shape[0] if alpha is not None else 1.0
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * scale
    elif kind == "diff":
        delta = t["diff"]
    else:
        raise ValueError(f"incomplete LoRA group {group.module_key}: {sorted(t)}")
    return delta if rows is None else delta[rows[0]: rows[1]]


def lokr_rank(tensors: dict) -> int | None:
    """The rank alpha divides by (w2's decomposition, else w1's); None when both factors are full."""
    if "lokr_w2_b" in tensors:
        return tensors["lokr_w2_b"].shape[0]
    return tensors["lokr_w1_b"].shape[0] if "lokr_w1_b" in tensors else None


def lokr_scale(group: LoraGroup) -> float:
    """alpha / rank (LyCORIS, ComfyUI); with both factors full, 1 — except musubi-tuner's own LoKr,
    which scales a full w2 by alpha / max(w2.shape)."""
    alpha = float(group.tensors["alpha"]) if "alpha" in group.tensors else None
    dim = lokr_rank(group.tensors)
    if dim is None and group.musubi_lokr:
        dim = max(group.tensors["lokr_w2"].shape)
    return alpha / dim if (alpha is not None and dim) else 1.0


def delta_shape(group: LoraGroup) -> tuple[int, int]:
    t = group.tensors
    kind = group.kind
    if kind == "lora":
        return (t["up"].shape[0], t["down"].flatten(1).shape[1])
    if kind == "lokr":
        w1 = t["lokr_w1"].shape if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
        w2 = t["lokr_w2"].shape if "lokr_w2" in t else (t["lokr_w2_a"].shape[0], t["lokr_w2_b"].shape[1])
        return (w1[0] * w2[0], w1[1] * w2[1])
    if kind == "loha":
        return (t["hada_w1_a"].shape[0], t["hada_w1_b"].shape[1])
    return tuple(t["diff"].shape)
