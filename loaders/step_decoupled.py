"""Step-decoupled (2-step, "Turbo++") models: separate parameters for each of the two denoising steps.

Three ways to make one:
- two models (two transformer files, or one transformer with a LoRA stack per step): ``from_models``;
- a bundle file: the tensors both steps share stored once, the differing ones per step, and the
  sampler settings in the safetensors header: ``load_bundle`` / ``save_bundle``.
A plain Turbo model (the same parameters for both steps) is the degenerate case.

Both steps run on one module: step 1's tensors are the module's own, step 2's differing tensors are
a ParamSet swapped in between the steps (see param_sets.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace

import torch
from diffusers import ZImageTransformer2DModel
from safetensors.torch import save_file

from .errors import ZImageInputError
from .quantized import quantized_layers
from .param_sets import ParamSet, host_copy, prepare_weights
from .safetensors_io import open_safetensors, require_file
from .transformer import ZImageTransformer, check_keys, config_from_state_dict, finish_module

BUNDLE_FORMAT = "zimage-step-decoupled"
BUNDLE_VERSION = "1"
WHAT = "Z-Image 2-step bundle"
STEP2_RULES = ("euler", "x0_renoise")


@dataclass(frozen=True)
class StepSettings:
    sigma_mid: float = 0.5  # unshifted; with shift 3 the model sees σ = 0.75 (the Turbo schedule for 2 steps)
    shift: float = 3.0
    step2_rule: str = "euler"

    def check(self) -> "StepSettings":
        if not 0.0 < float(self.sigma_mid) < 1.0:
            raise ZImageInputError("sigma_mid", repr(self.sigma_mid), "a value strictly between 0 and 1", "use 0.5 (the Turbo schedule's midpoint)")
        if self.shift <= 0:
            raise ZImageInputError("shift", repr(self.shift), "a positive number", "use 3.0")
        if self.step2_rule not in STEP2_RULES:
            raise ZImageInputError("step2_rule", repr(self.step2_rule), f"one of {STEP2_RULES}", "use 'euler'")
        return self


@dataclass
class StepDecoupledModel:
    """The model each step runs with (views of one shared module) and the sampler settings it brings."""

    steps: tuple  # (ZImageTransformer for step 1, ZImageTransformer for step 2)
    settings: StepSettings | None = None  # from a bundle; None = the sampler's inputs decide
    source: str = ""

    @property
    def module(self):
        return self.steps[0].module

    @property
    def cap_feat_dim(self) -> int:
        return self.steps[0].cap_feat_dim

    @property
    def differing_bytes(self) -> int:
        ps = self.steps[1].param_set
        return ps.nbytes if ps is not None else 0


def from_models(step1: ZImageTransformer, step2: ZImageTransformer) -> StepDecoupledModel:
    """Two models: the same module with a LoRA stack per step, or two transformers (their tensors
    are compared by content; only the differing ones are kept for step 2)."""
    if step1.module is step2.module:
        return StepDecoupledModel((step1, step2), source=step1.source)
    own = dict(step1.module.state_dict())
    other = dict(step2.module.state_dict())
    _check_same_shapes(own, other, "step2_model", "step1_model")
    differing = {name: host_copy(t) for name, t in other.items() if not torch.equal(t, own[name].to(t.device))}
    view2 = replace(step1, param_set=ParamSet(differing, os.path.basename(step2.source)), lora_stack=step2.lora_stack, controls=step2.controls)
    return StepDecoupledModel((step1, view2), source=f"{step1.source} + {step2.source}")


def _check_same_shapes(own: dict, other: dict, what: str, versus: str) -> None:
    mismatched = [n for n in own if n in other and tuple(own[n].shape) != tuple(other[n].shape)]
    missing = sorted(set(own) ^ set(other))
    if mismatched or missing:
        detail = (f"{len(mismatched)} tensors of other shapes (e.g. {mismatched[0]}: {tuple(other[mismatched[0]].shape)} vs {tuple(own[mismatched[0]].shape)})"
                  if mismatched else f"{len(missing)} tensors only one of them has (e.g. {missing[:2]})")
        raise ZImageInputError(what, detail, f"the same architecture as {versus}", "give two Z-Image transformers of the same size (e.g. Turbo and a Turbo fine-tune)")


def effective_state_dicts(model: StepDecoupledModel) -> tuple[dict, dict]:
    """Each step's full set of weights (LoRAs merged), as the module holds them for that step."""
    dicts = []
    for view in model.steps:
        prepare_weights(view)
        dicts.append({k: v.detach() for k, v in view.module.state_dict().items()})
    prepare_weights(model.steps[0])
    return dicts[0], dicts[1]


def save_bundle(model: StepDecoupledModel, path: str, settings: StepSettings | None = None) -> dict:
    """Write a bundle: shared tensors once (found by content), differing tensors per step. Returns counts."""
    settings = (settings or model.settings or StepSettings()).check()
    if quantized_layers(model.module):
        # LoRAs on quantised layers are added at compute time and are not in the state dict: a bundle
        # written from it would silently lose them
        raise ZImageInputError("step_model", "a quantised transformer (its LoRAs are applied at compute time, not stored)",
                               "a bf16, fp16 or fp32 transformer", "load the transformer with weight_dtype bf16 (it expands a quantised file) to save a bundle")
    first, second = effective_state_dicts(model)
    return write_bundle_file(first, second, path, settings, dict(model.module.config))


def write_bundle_file(first: dict, second: dict, path: str, settings: StepSettings, config: dict) -> dict:
    """The bundle format, for the engine and the ComfyUI side alike: two full diffusers-named state dicts
    (each step's effective weights) → the tensors equal in both once under ``shared/``, the others under
    ``step1/`` and ``step2/``, the sampler settings and the config in the header. Returns counts."""
    settings.check()
    _check_same_shapes(first, second, "step2_model", "step1_model")
    tensors = {}
    shared = 0
    for name, t1 in first.items():
        t2 = second[name]
        if t1.dtype == t2.dtype and torch.equal(t1, t2):
            tensors[f"shared/{name}"] = t1.cpu().contiguous()
            shared += 1
        else:
            tensors[f"step1/{name}"] = t1.cpu().contiguous()
            tensors[f"step2/{name}"] = t2.cpu().contiguous()
    metadata = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "sigma_mid": repr(float(settings.sigma_mid)),
                "shift": repr(float(settings.shift)), "step2_rule": settings.step2_rule, "key_naming": "diffusers",
                "config": json.dumps(_jsonable(config))}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        save_file(tensors, path, metadata=metadata)
    except Exception as exc:  # safetensors' own error type, or the OS's (disk full, permissions)
        raise ZImageInputError("filename", f"'{path}' could not be written ({exc})", "a writable file",
                               "check the name, the free disk space and the folder's permissions") from None
    return {"shared": shared, "per_step": len(first) - shared}


def _jsonable(config: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if not k.startswith("_")}


def read_bundle(path: str) -> tuple[dict, StepSettings]:
    """({"shared": …, "step1": …, "step2": …} diffusers-named tensors, the sampler settings) of a bundle,
    checked: the header, the parts, the same names and shapes for both steps."""
    require_file(path, WHAT)
    with open_safetensors(path, WHAT) as handle:
        meta = dict(handle.metadata() or {})
        if meta.get("format") != BUNDLE_FORMAT:
            raise ZImageInputError(
                WHAT, f"'{os.path.basename(path)}' is not a 2-step bundle (no '{BUNDLE_FORMAT}' header; a plain transformer checkpoint?)",
                "a bundle written by Save Z-Image 2-Step Bundle", "load a plain checkpoint with the Transformer Loader and feed it to the 2-Step Model node",
            )
        if meta.get("format_version") != BUNDLE_VERSION:
            raise ZImageInputError(
                WHAT, f"bundle format version {meta.get('format_version')!r}", f"version {BUNDLE_VERSION}",
                "update this node pack (a newer bundle) or re-save the bundle with this version",
            )
        keys = list(handle.keys())
        parts = {"shared": {}, "step1": {}, "step2": {}}
        for key in keys:
            part, _, name = key.partition("/")
            if part not in parts:
                raise ZImageInputError(WHAT, f"an unexpected tensor '{key}'", "shared/…, step1/… and step2/… tensors", "re-save the bundle")
            parts[part][name] = handle.get_tensor(key)
    if set(parts["step1"]) != set(parts["step2"]):
        only = sorted(set(parts["step1"]) ^ set(parts["step2"]))
        raise ZImageInputError(WHAT, f"tensors present for one step only (e.g. {only[:2]})", "the same tensor names for both steps", "re-save the bundle")
    _check_same_shapes(parts["step1"], parts["step2"], "bundle step 2", "step 1")
    try:
        settings = StepSettings(float(meta["sigma_mid"]), float(meta["shift"]), meta["step2_rule"]).check()
    except (KeyError, ValueError) as exc:
        raise ZImageInputError(WHAT, f"bad sampler settings in the header ({exc})", "sigma_mid, shift and step2_rule", "re-save the bundle") from None
    return parts, settings


def load_bundle(path: str) -> StepDecoupledModel:
    parts, settings = read_bundle(path)
    state = {**parts["shared"], **parts["step1"]}
    config = config_from_state_dict(state, path)
    with torch.device("meta"):
        module = ZImageTransformer2DModel(**config)
    check_keys(module, state, path)
    module.load_state_dict(state, strict=True, assign=True)
    dtype = parts["shared"][next(iter(parts["shared"]))].dtype if parts["shared"] else next(iter(state.values())).dtype
    base = finish_module(module.eval().requires_grad_(False), dtype, path)
    step2 = replace(base, param_set=ParamSet({k: host_copy(v) for k, v in parts["step2"].items()}, "step 2"))
    return StepDecoupledModel((base, step2), settings, path)
