"""LoRA nodes: one LoRA (chainable) and a stack of several. Each returns a new model object; the
weights are merged when a sampler runs, and removed again when a later run uses another stack."""

from __future__ import annotations

from ..loaders.lora_merge import prepare_lora
from . import comfy_services as services
from .types import CATEGORY, ZIMAGE_MODEL

NONE = "None"
_STRENGTH = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip": "Multiplies the LoRA's effect; 0 turns it off, negative inverts it."})
STACK_SLOTS = 4


def _lora_names() -> list[str]:
    return services.list_models("loras")


def apply_loras(model, entries) -> tuple:
    """Add (lora_name, strength) entries to the model's stack; the report names every key not applied."""
    reports = []
    for name, strength in entries:
        patch, report = prepare_lora(model.module, services.model_path("loras", name), strength)
        model = model.with_lora(patch)
        reports.append(report.text())
    return model, "\n\n".join(reports) if reports else "no LoRA selected"


class ZImageLoraLoader:
    DESCRIPTION = ("Adds a LoRA to a Z-Image model. Reads ai-toolkit, musubi-tuner (raw and ComfyUI-converted), ComfyUI, "
                   "diffusers/PEFT, DiffSynth and LyCORIS (LoKr, LoHa) files, and reports every key it could not apply. Chain several.")
    CATEGORY = f"{CATEGORY}/lora"
    RETURN_TYPES = (ZIMAGE_MODEL, "STRING")
    RETURN_NAMES = ("model", "report")
    OUTPUT_TOOLTIPS = ("The model with this LoRA added (the input model is unchanged).", "Keys applied, and every key that was not, with the reason.")
    FUNCTION = "load"
    SEARCH_ALIASES = ["lora", "load lora", "lycoris", "lokr", "distillpatch"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (ZIMAGE_MODEL, {"tooltip": "A Z-Image model (from the loader or another LoRA node)."}),
            "lora_name": (_lora_names(), {"tooltip": "A Z-Image LoRA in models/loras."}),
            "strength": _STRENGTH,
        }}

    def load(self, model, lora_name, strength=1.0):
        return apply_loras(model, [(lora_name, strength)])


class ZImageLoraStack:
    DESCRIPTION = "Adds up to four LoRAs with their own strengths in one node (e.g. a style LoRA plus the DistillPatch). 'None' slots are skipped."
    CATEGORY = f"{CATEGORY}/lora"
    RETURN_TYPES = (ZIMAGE_MODEL, "STRING")
    RETURN_NAMES = ("model", "report")
    OUTPUT_TOOLTIPS = ("The model with the LoRAs added (the input model is unchanged).", "Keys applied per LoRA, and every key that was not.")
    FUNCTION = "load"
    SEARCH_ALIASES = ["lora stack", "multiple loras", "distillpatch"]

    @classmethod
    def INPUT_TYPES(cls):
        names = [NONE] + _lora_names()
        required = {"model": (ZIMAGE_MODEL, {"tooltip": "A Z-Image model."})}
        for i in range(1, STACK_SLOTS + 1):
            required[f"lora_{i}"] = (names, {"default": NONE, "tooltip": f"LoRA {i} (models/loras), or None."})
            required[f"strength_{i}"] = _STRENGTH
        return {"required": required}

    def load(self, model, **slots):
        entries = [(slots[f"lora_{i}"], slots.get(f"strength_{i}", 1.0)) for i in range(1, STACK_SLOTS + 1) if slots.get(f"lora_{i}", NONE) != NONE]
        return apply_loras(model, entries)
