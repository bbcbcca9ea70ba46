"""LoRA nodes on any Z-Image MODEL: one LoRA (chainable with native LoraLoader too) and a stack of
four. Each returns a clone carrying ComfyUI weight patches (nodes/native_lora.py); the input is unchanged."""

from __future__ import annotations

from comfy_api.latest import io

from . import comfy_services as services
from .native_lora import lora_patches
from .types import CATEGORY

NONE = "None"
STACK_SLOTS = 4
_FORMATS = ("ai-toolkit, musubi-tuner (raw names, which native LoraLoader drops, and ComfyUI-converted), ComfyUI, "
            "diffusers/PEFT, DiffSynth and LyCORIS (LoKr, LoHa)")


def _strength(name: str = "strength") -> io.Float.Input:
    return io.Float.Input(name, default=1.0, min=-10.0, max=10.0, step=0.01, tooltip="Multiplies the LoRA's effect; 0 turns it off, negative inverts it.")


def add_loras(model, entries) -> tuple:
    """(a clone of ``model`` with every (lora_name, strength) as ComfyUI weight patches, the report).
    Every file is read and matched before the clone gets any patch."""
    prepared = [(lora_patches(model, services.model_path("loras", name)), strength) for name, strength in entries]
    patched = model.clone()
    for (patches, _), strength in prepared:
        patched.add_patches(patches, float(strength))
    reports = [report.text() for (_, report), _ in prepared]
    return patched, "\n\n".join(reports) if reports else "no LoRA selected"


class ZImageLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLoraLoader", display_name="Z-Image LoRA", category=f"{CATEGORY}/lora",
            description=(f"Adds a LoRA to any Z-Image MODEL as ComfyUI's own weight patches. Reads {_FORMATS} files, and reports every "
                         "key it could not apply. Chain several, with native LoRA loaders too."),
            search_aliases=["lora", "load lora", "lycoris", "lokr", "musubi", "distillpatch"],
            inputs=[io.Model.Input("model", tooltip="A Z-Image MODEL (Load Diffusion Model, the pack's loader, another LoRA node)."),
                    io.Combo.Input("lora_name", options=services.list_models("loras"), tooltip="A Z-Image LoRA in models/loras."),
                    _strength()],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL with this LoRA (the input MODEL is unchanged)."),
                     io.String.Output(display_name="report", tooltip="Keys applied, and every key that was not, with the reason.")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength=1.0) -> io.NodeOutput:
        return io.NodeOutput(*add_loras(model, [(lora_name, strength)]))


class ZImageLoraStack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = [NONE] + services.list_models("loras")
        slots = []
        for i in range(1, STACK_SLOTS + 1):
            slots += [io.Combo.Input(f"lora_{i}", options=names, default=NONE, tooltip=f"LoRA {i} (models/loras), or None."), _strength(f"strength_{i}")]
        return io.Schema(
            node_id="ZImageLoraStack", display_name="Z-Image LoRA Stack", category=f"{CATEGORY}/lora",
            description="Adds up to four LoRAs with their own strengths in one node (e.g. a style LoRA plus the DistillPatch). 'None' slots are skipped.",
            search_aliases=["lora stack", "multiple loras", "distillpatch"],
            inputs=[io.Model.Input("model", tooltip="A Z-Image MODEL."), *slots],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL with the LoRAs (the input MODEL is unchanged)."),
                     io.String.Output(display_name="report", tooltip="Keys applied per LoRA, and every key that was not.")],
        )

    @classmethod
    def execute(cls, model, **slots) -> io.NodeOutput:
        entries = [(slots[f"lora_{i}"], slots.get(f"strength_{i}", 1.0)) for i in range(1, STACK_SLOTS + 1) if slots.get(f"lora_{i}", NONE) != NONE]
        return io.NodeOutput(*add_loras(model, entries))
