"""LoRA files written the way each trainer's save code writes them, not by the pack's own generator.

Every file here is built in the test from seeded random factors, in the exact on-disk layout of one
trainer (key names, prefixes, which layers, alpha tensors and their dtype, the save dtype, the
header), with alpha != rank wherever the trainer stores an alpha. The pack's merged weights are then
checked two ways:

- against the trainer's own math, written out below independently of the pack
  (LoRA: W + s·(alpha/rank)·up@down; LoKr: kron(w1, w2)·alpha/rank, with the trainer's rule for
  what "rank" is; LoHa: (w1a@w1b)⊙(w2a@w2b)·alpha/rank);
- where diffusers reads the format, against diffusers' own loader: ``load_lora_weights`` +
  ``fuse_lora`` on a ZImagePipeline (PEFT does the fusing).

Tolerance: ATOL = 1e-5 on float32 weights of size ~0.05. Both sides compute the same float32
products in a different order (blocked addmm here, a full matmul in the reference), which differs by
~1e-7; every delta checked is > 100·ATOL, so a wrong scale, a missed layer or a transposed factor
fails by orders of magnitude.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from zimage_pack.loaders.lora_merge import prepare_lora, sync_lora_stack
from zimage_pack.loaders.transformer import load_transformer

ATOL = 1e-5
STRENGTH = 0.8
ATTN = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
FF = ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
MOD = ("adaLN_modulation.0",)
ALL_BLOCKS = ("layers", "noise_refiner", "context_refiner")


# --- helpers -------------------------------------------------------------------------------------

def _linears(module, blocks=("layers",), parts=ATTN + FF) -> dict[str, tuple[int, int]]:
    """{dotted module name: (out, in)} of the block Linears a trainer adapts."""
    found = {}
    for name, mod in module.named_modules():
        pieces = name.split(".", 2)
        if isinstance(mod, torch.nn.Linear) and len(pieces) == 3 and pieces[0] in blocks and pieces[2] in parts:
            found[name] = tuple(mod.weight.shape)
    return found


class _Rand:
    """Seeded values, rounded to the dtype the trainer saves in (the expected math uses the rounded values)."""

    def __init__(self, seed: int, dtype=torch.float32, std=0.1):
        self.g, self.dtype, self.std = torch.Generator().manual_seed(seed), dtype, std

    def __call__(self, *shape):
        return (torch.randn(*shape, generator=self.g) * self.std).to(self.dtype)


def _f(t):
    return t.to(torch.float32)


def _kohya(name: str) -> str:
    return name.replace(".", "_")


def _lycoris_fact(dim: int) -> tuple[int, int]:
    """LyCORIS / ai-toolkit factor=-1: the divisor pair nearest sqrt(dim), smaller first."""
    m = max(d for d in range(1, math.isqrt(dim) + 1) if dim % d == 0)
    return m, dim // m


def _musubi_fact(dim: int) -> tuple[int, int]:
    """musubi-tuner's networks/lokr.py factor=-1: the same pair, larger first."""
    m, n = _lycoris_fact(dim)
    return n, m


class Case:
    """One file: its tensors exactly as saved, its header, and the expected delta per model weight."""

    def __init__(self, tensors, deltas, metadata=None):
        self.tensors, self.deltas, self.metadata = tensors, deltas, metadata

    def write(self, path) -> str:
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path), metadata=self.metadata)
        return str(path)


# --- plain LoRA trainers -------------------------------------------------------------------------

def ai_toolkit(module, dtype=torch.bfloat16, rank=4, seed=1) -> Case:
    """ai-toolkit: ``diffusion_model.<dotted>.lora_A/B.weight`` on layers.N attention, feed-forward and
    adaLN_modulation.0 (not the refiners), no alpha (alpha = rank), saved in bf16 (the UI default) or fp16."""
    r = _Rand(seed, dtype)
    tensors, deltas = {}, {}
    for name, (out_f, in_f) in _linears(module, ("layers",), ATTN + FF + MOD).items():
        down, up = r(rank, in_f), r(out_f, rank)
        tensors[f"diffusion_model.{name}.lora_A.weight"], tensors[f"diffusion_model.{name}.lora_B.weight"] = down, up
        deltas[f"{name}.weight"] = _f(up) @ _f(down)
    software = json.dumps({"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit", "version": "0.7.0"})
    return Case(tensors, deltas, {"format": "pt", "ss_base_model_version": "zimage", "software": software})


def musubi_raw(module, dtype=torch.float32, rank=4, alpha=1.0, seed=2) -> Case:
    """musubi-tuner networks.lora_zimage: ``lora_unet_<flattened>.lora_down/lora_up.weight`` and a 0-dim
    ``.alpha`` in the save dtype (network_alpha defaults to 1, so alpha != rank); layers.N attention and
    feed-forward only (``_modulation`` and ``_refiner`` are excluded). fp32 by default, bf16 in older versions."""
    r = _Rand(seed, dtype)
    tensors, deltas = {}, {}
    for name, (out_f, in_f) in _linears(module).items():
        key = "lora_unet_" + _kohya(name)
        down, up = r(rank, in_f), r(out_f, rank)
        a = torch.tensor(alpha, dtype=dtype)
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"], tensors[f"{key}.alpha"] = down, up, a
        deltas[f"{name}.weight"] = (float(a) / rank) * (_f(up) @ _f(down))
    meta = {"ss_network_module": "networks.lora_zimage", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
            "ss_base_model_version": "z_image"}
    return Case(tensors, deltas, meta)


def musubi_comfy(module, dtype=torch.float32) -> Case:
    """musubi's networks/convert_z_image_lora_to_comfy.py applied to the raw file: ``attention_to_out_0``
    renamed ``attention_out``; q/k/v fused into ``attention_qkv`` with down = cat of the three downs
    (3r × in), up = block-diagonal of the three ups (3·out × 3r), alpha = 3·alpha (alpha/rank unchanged).
    The weight change is the raw file's."""
    raw = musubi_raw(module, dtype)
    src = dict(raw.tensors)
    tensors = {}
    for name in _linears(module):
        if not name.endswith("attention.to_q"):
            continue
        base = "lora_unet_" + _kohya(name.rsplit(".", 1)[0])  # lora_unet_layers_N_attention
        downs = [src.pop(f"{base}_to_{p}.lora_down.weight") for p in "qkv"]
        ups = [src.pop(f"{base}_to_{p}.lora_up.weight") for p in "qkv"]
        alphas = [src.pop(f"{base}_to_{p}.alpha") for p in "qkv"]
        tensors[f"{base}_qkv.lora_down.weight"] = torch.cat(downs, 0)
        tensors[f"{base}_qkv.lora_up.weight"] = torch.block_diag(*ups)
        tensors[f"{base}_qkv.alpha"] = alphas[0] * 3
    for key, value in src.items():
        tensors[key.replace("attention_to_out_0", "attention_out")] = value
    return Case(tensors, raw.deltas, raw.metadata)


def musubi_other(module, legacy=False) -> Case:
    """musubi's convert_lora.py --target other: ``diffusion_model.<module>.lora_A/B.weight`` and no alpha,
    alpha/rank folded in by multiplying both A and B by sqrt(alpha/rank). Versions before its Z-Image fix
    turned every underscore into a dot (``attention.to.q``, ``feed.forward.w1``): ``legacy``."""
    raw = musubi_raw(module, torch.float32)
    tensors = {}
    for name in _linears(module):
        key = "lora_unet_" + _kohya(name)
        alpha = raw.tensors[f"{key}.alpha"]
        down, up = raw.tensors[f"{key}.lora_down.weight"], raw.tensors[f"{key}.lora_up.weight"]
        target = name.replace("_", ".") if legacy else name
        tensors[f"diffusion_model.{target}.lora_A.weight"] = down * (alpha / down.shape[0]).sqrt()
        tensors[f"diffusion_model.{target}.lora_B.weight"] = up * (alpha / up.shape[1]).sqrt()
    return Case(tensors, raw.deltas, raw.metadata)


def musubi_other_back(module) -> Case:
    """The reverse (convert_lora.py --target default) of the --target other file: ``lora_unet_`` names
    again, with an int64 ``alpha`` equal to the rank (scale 1: the sqrt-folded factors carry the scale)."""
    other = musubi_other(module)
    tensors = {}
    for key, value in other.tensors.items():
        body = key.split(".", 1)[1]
        new = ("lora_unet_" + body.replace(".", "_")).replace("_lora_A_", ".lora_down.").replace("_lora_B_", ".lora_up.")
        tensors[new] = value
        if new.endswith(".lora_down.weight"):
            tensors[new.replace(".lora_down.weight", ".alpha")] = torch.tensor(value.shape[0])
    assert all(v.dtype == torch.int64 for k, v in tensors.items() if k.endswith(".alpha"))
    return Case(tensors, other.deltas, other.metadata)


def diffsynth(module, rank=4, seed=3) -> Case:
    """DiffSynth-Studio: peft's state dict saved as is, bare dotted keys with the adapter name
    (``layers.0.attention.to_q.lora_A.default.weight``), targets to_q,to_k,to_v,to_out.0,w1,w2,w3, which
    also hits noise_refiner.N and context_refiner.N; no alpha (peft's lora_alpha = rank), bf16."""
    r = _Rand(seed, torch.bfloat16)
    tensors, deltas = {}, {}
    for name, (out_f, in_f) in _linears(module, ALL_BLOCKS).items():
        down, up = r(rank, in_f), r(out_f, rank)
        tensors[f"{name}.lora_A.default.weight"], tensors[f"{name}.lora_B.default.weight"] = down, up
        deltas[f"{name}.weight"] = _f(up) @ _f(down)
    assert any(k.startswith("noise_refiner.") for k in tensors) and any(k.startswith("context_refiner.") for k in tensors)
    return Case(tensors, deltas, {"format": "pt"})


# --- LoKr ----------------------------------------------------------------------------------------

def lycoris_lokr(module, prefix, rank, alpha, decompose_both=False, blocks=("layers",), parts=ATTN + FF + MOD,
                 dtype=torch.float32, seed=4) -> Case:
    """LyCORIS LokrModule (also ai-toolkit's copy of it), factor -1. Per layer: out = out_l·out_k,
    in = in_m·in_n (smaller factor first); w1 (out_l × in_m) is full unless decompose_both and
    rank < max(out_l, in_m)/2 (then w1_a @ w1_b); w2 (out_k × in_n) is w2_a @ w2_b when
    rank < max(out_k, in_n)/2, else full. ΔW = kron(w1, w2)·alpha/rank, except that with both factors
    full LyCORIS sets alpha = rank (scale 1) and stores that alpha."""
    r = _Rand(seed, dtype, std=0.4)
    tensors, deltas = {}, {}
    for name, (out_f, in_f) in _linears(module, blocks, parts).items():
        key = prefix(name)
        (out_l, out_k), (in_m, in_n) = _lycoris_fact(out_f), _lycoris_fact(in_f)
        full_w1 = not (decompose_both and rank < max(out_l, in_m) / 2)
        full_w2 = not rank < max(out_k, in_n) / 2
        if full_w1:
            w1 = tensors[f"{key}.lokr_w1"] = r(out_l, in_m)
        else:
            tensors[f"{key}.lokr_w1_a"], tensors[f"{key}.lokr_w1_b"] = r(out_l, rank), r(rank, in_m)
            w1 = _f(tensors[f"{key}.lokr_w1_a"]) @ _f(tensors[f"{key}.lokr_w1_b"])
        if full_w2:
            w2 = tensors[f"{key}.lokr_w2"] = r(out_k, in_n)
        else:
            tensors[f"{key}.lokr_w2_a"], tensors[f"{key}.lokr_w2_b"] = r(out_k, rank), r(rank, in_n)
            w2 = _f(tensors[f"{key}.lokr_w2_a"]) @ _f(tensors[f"{key}.lokr_w2_b"])
        if alpha is not None:
            stored = rank if (full_w1 and full_w2) else alpha
            tensors[f"{key}.alpha"] = torch.tensor(float(stored), dtype=dtype)
        scale = 1.0 if (full_w1 and full_w2) or alpha is None else alpha / rank
        deltas[f"{name}.weight"] = torch.kron(_f(w1), _f(w2)) * scale
    return Case(tensors, deltas, {"ss_network_module": "lycoris.kohya", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})


def lokr_cases():
    return {
        # the LyCORIS wrapper's own names; rank 8 alpha 4: the 64-wide layers (8×8 factors) get both
        # factors full (scale 1, stored alpha 8), the feed-forward ones a low-rank w2 (scale 4/8)
        "lycoris-lokr": lambda m: lycoris_lokr(m, lambda n: "lycoris_" + _kohya(n), rank=8, alpha=4.0),
        # the kohya wrapper (lycoris.kohya) names them lora_unet_; decompose_both: w1 and w2 low-rank
        "lycoris-kohya-lokr-both-decomposed": lambda m: lycoris_lokr(m, lambda n: "lora_unet_" + _kohya(n), rank=2, alpha=1.0,
                                                                     decompose_both=True, blocks=ALL_BLOCKS),
        # ai-toolkit LoKr: dotted names under diffusion_model., low-rank w2 with alpha
        "ai-toolkit-lokr": lambda m: lycoris_lokr(m, lambda n: "diffusion_model." + n, rank=2, alpha=1.0),
        # ai-toolkit full-rank LoKr: huge rank, both factors full, stored alpha = rank = 10000, scale 1
        "ai-toolkit-lokr-full": lambda m: lycoris_lokr(m, lambda n: "diffusion_model." + n, rank=10000, alpha=1.0),
        # seen in the wild: bare dotted names, both factors full, no alpha at all, modulation included
        "bare-lokr-no-alpha": lambda m: lycoris_lokr(m, lambda n: n, rank=10000, alpha=None, blocks=ALL_BLOCKS),
    }


def musubi_lokr(module, rank=8, alpha=1.0, dtype=torch.float32, seed=5) -> Case:
    """musubi-tuner networks.lokr: ``lora_unet_`` names on layers.N attention + feed-forward; factors
    larger first; w1 always full; w2 = w2_a @ w2_b when rank < max(out_k, in_n), else full; alpha
    (network_alpha, default 1) always stored; scale = alpha / dim with dim = the rank of w2_a, or
    max(w2.shape) for a full w2 (musubi's LoKrModule.get_weight and merge_to). The network also saves
    an int64 ``lokr_factor`` tensor and the ``ss_lokr_factor`` header. Rank 8 here: the 64-wide layers
    get a full 8×8 w2 (scale 1/8), the feed-forward ones a low-rank w2 (scale 1/8)."""
    r = _Rand(seed, dtype, std=0.4)
    tensors, deltas = {"lokr_factor": torch.tensor(-1, dtype=torch.int64)}, {}
    for name, (out_f, in_f) in _linears(module).items():
        key = "lora_unet_" + _kohya(name)
        (out_l, out_k), (in_m, in_n) = _musubi_fact(out_f), _musubi_fact(in_f)
        w1 = tensors[f"{key}.lokr_w1"] = r(out_l, in_m)
        if rank < max(out_k, in_n):
            tensors[f"{key}.lokr_w2_a"], tensors[f"{key}.lokr_w2_b"] = r(out_k, rank), r(rank, in_n)
            w2, dim = _f(tensors[f"{key}.lokr_w2_a"]) @ _f(tensors[f"{key}.lokr_w2_b"]), rank
        else:
            w2 = tensors[f"{key}.lokr_w2"] = r(out_k, in_n)
            dim = max(w2.shape)
        tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=dtype)
        deltas[f"{name}.weight"] = torch.kron(_f(w1), _f(w2)) * (alpha / dim)
    assert any(k.endswith(".lokr_w2") for k in tensors) and any(k.endswith(".lokr_w2_a") for k in tensors)
    meta = {"ss_network_module": "networks.lokr", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
            "ss_lokr_factor": "-1", "ss_base_model_version": "z_image"}
    return Case(tensors, deltas, meta)


def musubi_lokr_comfy(module, svd_rank=64, rank=8) -> Case:
    """convert_z_image_lora_to_comfy.py on a musubi LoKr: q/k/v deltas (musubi's scale rule) are
    concatenated and turned into one LoRA by SVD, capped at rank 64 (lossless here: 64 input features),
    ``attention_qkv.lora_up/lora_down`` with alpha = float(rank); the other LoKr layers keep their tensors
    (to_out renamed ``attention_out``); ``lokr_factor`` is kept."""
    src = musubi_lokr(module, rank=rank)
    tensors = dict(src.tensors)
    for name in _linears(module):
        if not name.endswith("attention.to_q"):
            continue
        base = "lora_unet_" + _kohya(name.rsplit(".", 1)[0])
        combined = torch.cat([src.deltas[name.replace("to_q", f"to_{p}") + ".weight"] for p in "qkv"], 0)
        for p in "qkv":
            for suffix in (".lokr_w1", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b", ".alpha"):
                tensors.pop(f"{base}_to_{p}{suffix}", None)
        u, s, vh = torch.linalg.svd(combined, full_matrices=False)
        k = min(svd_rank, s.shape[0])
        tensors[f"{base}_qkv.lora_up.weight"] = u[:, :k] * s[:k].sqrt()
        tensors[f"{base}_qkv.lora_down.weight"] = s[:k].sqrt()[:, None] * vh[:k]
        tensors[f"{base}_qkv.alpha"] = torch.tensor(float(k))
    tensors = {k.replace("attention_to_out_0", "attention_out"): v for k, v in tensors.items()}
    return Case(tensors, src.deltas, src.metadata)


# --- LoHa ----------------------------------------------------------------------------------------

def loha(module, prefix, rank=4, alpha=2.0, blocks=("layers",), parts=ATTN + FF + MOD, dtype=torch.float32, seed=6) -> Case:
    """LyCORIS LohaModule / musubi networks.loha: hada_w1_a (out × r), hada_w1_b (r × in), hada_w2_a,
    hada_w2_b and alpha; ΔW = (w1a@w1b)⊙(w2a@w2b)·alpha/r."""
    r = _Rand(seed, dtype, std=0.3)
    tensors, deltas = {}, {}
    for name, (out_f, in_f) in _linears(module, blocks, parts).items():
        key = prefix(name)
        w1a, w1b, w2a, w2b = r(out_f, rank), r(rank, in_f), r(out_f, rank), r(rank, in_f)
        tensors.update({f"{key}.hada_w1_a": w1a, f"{key}.hada_w1_b": w1b, f"{key}.hada_w2_a": w2a, f"{key}.hada_w2_b": w2b,
                        f"{key}.alpha": torch.tensor(alpha, dtype=dtype)})
        deltas[f"{name}.weight"] = (_f(w1a) @ _f(w1b)) * (_f(w2a) @ _f(w2b)) * (alpha / rank)
    return Case(tensors, deltas, {"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})


def musubi_loha_comfy(module) -> Case:
    """convert_z_image_lora_to_comfy.py on a musubi LoHa: q/k/v fused losslessly into ``attention_qkv``
    with w1_a, w2_a block-diagonal, w1_b, w2_b concatenated (rank 3r) and alpha·3; to_out → attention_out."""
    src = loha(module, lambda n: "lora_unet_" + _kohya(n), rank=4, alpha=1.0, parts=ATTN + FF)
    tensors = dict(src.tensors)
    for name in _linears(module):
        if not name.endswith("attention.to_q"):
            continue
        base = "lora_unet_" + _kohya(name.rsplit(".", 1)[0])
        parts = {s: [tensors.pop(f"{base}_to_{p}.{s}") for p in "qkv"] for s in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha")}
        tensors[f"{base}_qkv.hada_w1_a"] = torch.block_diag(*parts["hada_w1_a"])
        tensors[f"{base}_qkv.hada_w2_a"] = torch.block_diag(*parts["hada_w2_a"])
        tensors[f"{base}_qkv.hada_w1_b"] = torch.cat(parts["hada_w1_b"], 0)
        tensors[f"{base}_qkv.hada_w2_b"] = torch.cat(parts["hada_w2_b"], 0)
        tensors[f"{base}_qkv.alpha"] = parts["alpha"][0] * 3
    tensors = {k.replace("attention_to_out_0", "attention_out"): v for k, v in tensors.items()}
    return Case(tensors, src.deltas, src.metadata)


def _without(case: Case, key: str) -> Case:
    case.tensors.pop(key)
    return case


CASES = {
    "ai-toolkit-bf16": lambda m: ai_toolkit(m, torch.bfloat16),
    "ai-toolkit-fp16": lambda m: ai_toolkit(m, torch.float16),
    "musubi-fp32": lambda m: musubi_raw(m, torch.float32, rank=6),
    "musubi-bf16": lambda m: musubi_raw(m, torch.bfloat16),
    "musubi-comfy-fused-qkv": lambda m: musubi_comfy(m),
    "musubi-convert-other": lambda m: musubi_other(m),
    "musubi-convert-other-legacy-dots": lambda m: musubi_other(m, legacy=True),
    "musubi-convert-back-int64-alpha": musubi_other_back,
    "diffsynth": diffsynth,
    **lokr_cases(),
    "musubi-lokr": musubi_lokr,
    "musubi-lokr-comfy": musubi_lokr_comfy,
    # the lokr_factor buffer lost (musubi then reads ss_lokr_factor from the header)
    "musubi-lokr-header-only": lambda m: _without(musubi_lokr(m), "lokr_factor"),
    "lycoris-loha": lambda m: loha(m, lambda n: "lycoris_" + _kohya(n), blocks=ALL_BLOCKS),
    "musubi-loha": lambda m: loha(m, lambda n: "lora_unet_" + _kohya(n), rank=4, alpha=1.0, parts=ATTN + FF),
    "musubi-loha-comfy": musubi_loha_comfy,
}
# the formats diffusers' ZImagePipeline.load_lora_weights reads
DIFFUSERS_READS = ["ai-toolkit-bf16", "ai-toolkit-fp16", "musubi-fp32", "musubi-bf16", "musubi-convert-other",
                   "musubi-convert-back-int64-alpha", "diffsynth", "ai-toolkit-lokr", "ai-toolkit-lokr-full"]


# --- checks --------------------------------------------------------------------------------------

def _pack_merge(model_files, path, strength=STRENGTH):
    model = load_transformer(model_files["comfy"])
    before = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    patch, report = prepare_lora(model.module, path, strength)
    sync_lora_stack(model.module, (patch,))
    return before, model.module.state_dict(), report


def _diffusers_fuse(model_files, tiny_vae, path, strength=STRENGTH):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    reference = load_transformer(model_files["comfy"]).module
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=tiny_vae, text_encoder=None, tokenizer=None, transformer=reference)
    pipe.load_lora_weights(path, adapter_name="x")
    pipe.fuse_lora(lora_scale=strength)
    return {k.replace("base_layer.", ""): v for k, v in reference.state_dict().items() if "lora_" not in k and "lokr_" not in k}


@pytest.fixture()
def tiny_module(model_files):
    return load_transformer(model_files["comfy"]).module


@pytest.mark.parametrize("fmt", list(CASES))
def test_trainer_file_merges_as_the_trainer_computes_it(model_files, tiny_module, tmp_path, fmt):
    case = CASES[fmt](tiny_module)
    path = case.write(tmp_path / f"{fmt}.safetensors")
    before, after, report = _pack_merge(model_files, path)
    assert report.not_applied == [], report.text()
    assert len(report.applied) == len(case.tensors), report.text()  # every tensor written is accounted for
    assert set(case.deltas) <= set(before) and len(case.deltas) >= 14
    for name in before:
        if name not in case.deltas:
            assert torch.equal(after[name], before[name]), f"{name} changed but the file does not adapt it"
            continue
        change = STRENGTH * case.deltas[name]
        assert change.abs().max() > 100 * ATOL, name  # the check below can tell a wrong scale from rounding
        err = (after[name] - (before[name] + change)).abs().max().item()
        assert err <= ATOL, (name, err)


@pytest.mark.parametrize("fmt", DIFFUSERS_READS)
def test_trainer_file_merges_as_diffusers_fuses_it(model_files, tiny_module, tiny_vae, tmp_path, fmt):
    case = CASES[fmt](tiny_module)
    path = case.write(tmp_path / f"{fmt}.safetensors")
    fused = _diffusers_fuse(model_files, tiny_vae, path)
    before, after, report = _pack_merge(model_files, path)
    assert report.not_applied == [], report.text()
    assert set(fused) == set(after)
    changed_by_diffusers = {k for k in before if not torch.equal(fused[k], before[k])}
    assert changed_by_diffusers == set(case.deltas)  # diffusers read every layer of the file, and only those
    worst = max((after[k] - fused[k]).abs().max().item() for k in after)
    assert worst <= ATOL, worst
