"""What the trainer leaves: one LoRA file per step (diffusers / PEFT naming: the pack's LoRA loader
and diffusers' ``load_lora_weights`` read it) and a 2-step bundle for the 2-Step Bundle Loader, with
σ_mid, shift and the step-2 rule in its header. The bundle is written by the pack itself: the teacher
file loaded, each step's LoRA applied the way the LoRA node applies it, and Save 2-Step Bundle's code."""

from __future__ import annotations

import json
import os

from safetensors.torch import save_file

from ..loaders.lora_merge import prepare_lora
from ..loaders.step_decoupled import from_models, save_bundle
from ..loaders.transformer import load_transformer


def lora_paths(out: str) -> dict[str, str]:
    return {step: os.path.join(out, f"{step}_lora.safetensors") for step in ("step1", "step2")}


def write_loras(states: dict, out: str, config) -> dict[str, str]:
    paths = lora_paths(out)
    for step, path in paths.items():
        metadata = {"format": "peft-lora", "step": step, "rank": str(config.rank), "sigma_mid": repr(config.sigma_mid), "shift": repr(config.shift),
                    "step2_rule": config.step2_rule, "trainer": "zimage-distill (Turbo++ step-decoupled)", "decoupled": str(config.decoupled)}
        save_file(states[step], path, metadata=metadata)
    return paths


def bundle_weight_dtype(weight_dtype: str) -> str:
    """A bundle holds each step's weights with its LoRA merged in, so it is written in a float dtype:
    fp32 or fp16 when asked, else bf16 — a quantised teacher (Comfy-Org fp8, GGUF, ``--weight-dtype
    fp8_e4m3fn``) is expanded; re-quantising the merged weights would round the LoRA away."""
    return weight_dtype if weight_dtype in ("bf16", "fp16", "fp32") else "bf16"


def write_bundle(teacher_path: str, loras: dict[str, str], path: str, settings, weight_dtype: str = "default") -> dict:
    weight_dtype = bundle_weight_dtype(weight_dtype)
    teacher = load_transformer(teacher_path, weight_dtype=weight_dtype, compute_dtype="fp32" if weight_dtype == "fp32" else "auto")
    views = []
    for step in ("step1", "step2"):
        patch, report = prepare_lora(teacher.module, loras[step], 1.0)
        if report.not_applied:
            raise ValueError(f"{loras[step]}: keys the pack could not apply: {report.text()}")
        views.append(teacher.with_lora(patch))
    return save_bundle(from_models(*views), path, settings)


def write_summary(out: str, config, counts: dict) -> None:
    with open(os.path.join(out, "distill_summary.json"), "w", encoding="utf-8") as handle:
        json.dump({"config": {k: v for k, v in vars(config).items() if k != "prompts"}, "prompts": len(config.prompts), "bundle": counts}, handle, indent=1, default=list)
