"""The Fun ControlNet (Z-Image-Turbo-Fun-Controlnet-Union, every version) on a native Z-Image MODEL, as
ComfyUI model patches: a clone of the MODEL with a noise-refiner patch and a double-block patch (the points
native ``ZImageFunControlnet`` uses), the ControlNet's weights in ComfyUI's own modules (comfy ops: fp8
storage, cast per call) held by a ComfyUI patcher that the patches report through ``models()``, so ComfyUI's
memory manager loads, partly loads or streams them with the MODEL.

Where the hints go follows the reference (VideoX-Fun's code; diffusers' pipeline for 1.0), which differs
from native ``ZImageFunControlnet`` (see bench/comfyui/native_controlnet_vs_reference.py):
- the control branch of the main layers runs on the whole unified sequence, the control image tokens
  (with the image's pad tokens) *and* the caption, and its hint is added to both;
- 2.x's refiner stage runs on the embedded image tokens before the noise refiner, its first two skips
  are added after noise-refiner blocks 0 and 1 (2.0: the control layers themselves, as its reference);
- strength scales every hint; start/end percent on the MODEL's own ``percent_to_sigma``.
The control input (16 channels, or 33: control, 1 − mask, inpaint with the masked pixels grey) is built as
the reference builds it (samplers/control.py), encoded with the native VAE.
"""

from __future__ import annotations

import os

import comfy.ldm.common_dit
import comfy.ldm.lumina.controlnet
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import torch

from ..loaders.controlnet import (
    DEFAULT_STRENGTH,
    WHAT,
    detect_version,
    read_controlnet_state,
)
from ..loaders.dtypes import FP8_DTYPES, parse_weight_dtype
from ..loaders.errors import ZImageInputError
from ..samplers.control import assemble_control_input
from ..samplers.latents import to_model_space

PATCH = "2-1"
_KEY = "zimage_control"  # the wrappers' key on the MODEL


class NativeControlNet:
    """What ZIMAGE_CONTROLNET carries: the ControlNet in ComfyUI's modules and patcher, and its layout."""

    def __init__(self, patcher, version: str, control_in_dim: int, places: list[int], refiner: str | None, source: str):
        self.patcher = patcher
        self.version = version
        self.control_in_dim = control_in_dim
        self.places = places
        self.refiner = refiner  # None (1.0) | "control_layers" (2.0) | "control_noise_refiner" (2.1, lite)
        self.source = source

    @property
    def module(self):
        return self.patcher.model

    @property
    def inpaint_channels(self) -> bool:
        return self.control_in_dim == 33

    @property
    def default_strength(self) -> float:
        return DEFAULT_STRENGTH[self.version]

    @property
    def dim(self) -> int:
        return self.module.control_all_x_embedder[PATCH].weight.shape[0]

    def describe(self) -> str:
        dtype = str(self.module.control_layers[0].attention.qkv.weight.dtype).replace("torch.", "")
        return f"Union {self.version} ({self.control_in_dim} input channels, {len(self.places)} control layers, weights {dtype})"


def _converted(state: dict, dtype, small_dtype) -> dict:
    """The published (VideoX-Fun / diffusers) names → ComfyUI's block names (q, k and v fused into ``qkv``),
    matrices in ``dtype``, the rest in ``small_dtype``. A tensor shared by several keys is converted once."""
    done: dict = {}
    out = {}
    for key, value in state.items():
        if key.endswith((".attention.to_k.weight", ".attention.to_v.weight")):
            continue
        if key.endswith(".attention.to_q.weight"):
            base = key[: -len("to_q.weight")]
            parts = [value, state[base + "to_k.weight"], state[base + "to_v.weight"]]
            ids = tuple(map(id, parts))
            if ids not in done:
                done[ids] = torch.cat([p.to(dtype) for p in parts])
            out[base + "qkv.weight"] = done[ids]
            continue
        if id(value) not in done:
            done[id(value)] = value.to(dtype if value.ndim == 2 else small_dtype)
        value = done[id(value)]
        key = key.replace(".attention.to_out.0.", ".attention.out.").replace(".attention.norm_q.", ".attention.q_norm.")
        out[key.replace(".attention.norm_k.", ".attention.k_norm.")] = value
    return out


def controlnet_from_state(state: dict, weight_dtype: str = "default", source: str = "") -> NativeControlNet:
    """ComfyUI's Z-Image ControlNet modules (comfy ops, cast to the compute dtype per call) on the published
    tensors, version from the keys (loaders/controlnet.py). ``weight_dtype``: default (the file's), bf16,
    fp16 or fp8_e4m3fn / fp8_e5m2 (stored in fp8; computed in the MODEL's dtype)."""
    version, config = detect_version(state)
    refiner, n_control = config["add_control_noise_refiner"], len(config["control_layers_places"])
    stored = parse_weight_dtype(weight_dtype) or next(v.dtype for k, v in state.items() if k.endswith("to_q.weight"))
    if refiner == "control_layers":  # 2.0: its reference never runs the (untrained) refiner blocks
        state = {k: v for k, v in state.items() if not k.startswith("control_noise_refiner.")}
    # fp8 holds the matrices only (rounded once from the file); norms and biases stay in bf16, as the pack's engine keeps them
    state = _converted(state, stored, torch.bfloat16 if stored in FP8_DTYPES else stored)
    ffn = state["control_layers.0.feed_forward.w1.weight"].shape[0]
    with torch.device("meta"):
        module = comfy.ldm.lumina.controlnet.ZImage_Control(
            dim=config["dim"], n_heads=config["n_heads"], n_kv_heads=config["n_kv_heads"], n_control_layers=n_control,
            multiple_of=ffn, ffn_dim_multiplier=None,  # the feed-forward width from the file (10240 at dim 3840)
            control_in_dim=16, additional_in_dim=config["control_in_dim"] - 16, refiner_control=refiner is not None,
            dtype=stored, device=torch.device("meta"), operations=comfy.ops.manual_cast)
    if refiner == "control_layers":
        module.control_noise_refiner = torch.nn.ModuleList()
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ZImageInputError(WHAT, f"'{os.path.basename(source)}' ({version} layout) with {len(missing)} missing tensors (e.g. {missing[:2]}) "
                               f"and {len(unexpected)} unknown ones (e.g. {unexpected[:2]})", f"a complete Union {version} file", "download the file again")
    offload = comfy.model_management.unet_offload_device()
    module.load_state_dict(state, strict=True, assign=True)
    module.eval().requires_grad_(False)
    patcher = comfy.model_patcher.CoreModelPatcher(module, load_device=comfy.model_management.get_torch_device(), offload_device=offload)
    return NativeControlNet(patcher, version, config["control_in_dim"], list(config["control_layers_places"]), refiner, source)


def load_native_controlnet(path: str, weight_dtype: str = "default") -> NativeControlNet:
    return controlnet_from_state(read_controlnet_state(path), weight_dtype, path)


class ZImageControlPatch:
    """One ControlNet on one MODEL: called by NextDiT at each noise-refiner block ("noise_refiner") and after
    each main layer ("double_block"). Per-call state lives in that call's transformer_options."""

    def __init__(self, cnet: NativeControlNet, vae, image, inpaint_image, mask, strength: float, sigma_start: float, sigma_end: float,
                 resize: str, rope):
        self.cnet, self.vae, self.image, self.inpaint_image, self.mask = cnet, vae, image, inpaint_image, mask
        self.strength, self.sigma_start, self.sigma_end, self.resize = strength, sigma_start, sigma_end, resize
        self.rope = rope  # the MODEL's rope embedder (no weights): the caption's positions for the main-layer branch
        self.places = {place: k for k, place in enumerate(cnet.places)}
        self._encoded: dict = {}
        self._state_key = f"{_KEY}_{id(self):x}"

    # ComfyUI's hooks on patches: the patchers it must load, and moves
    def models(self):
        return [self.cnet.patcher]

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.device):
            self._encoded = {k: v.to(device_or_dtype) for k, v in self._encoded.items()}
        return self

    def control_input(self, batch: int, height: int, width: int) -> torch.Tensor:
        """The control input [batch, C, h, w] in model space, float32 (encoded once per latent size and batch)."""
        key = (batch, height, width)
        if key not in self._encoded:
            def encode(pixels):
                return to_model_space(self.vae.encode(pixels).float())

            self._encoded = {key: assemble_control_input(encode, self.cnet.inpaint_channels, self.cnet.version, self.image, self.inpaint_image,
                                                         self.mask, self.resize, batch, height, width).float()}
        return self._encoded[key]

    def prepare(self, noise_shape) -> None:
        """Before ComfyUI loads the models for sampling (the latent's size known): encode here rather than mid-forward."""
        self.control_input(noise_shape[0], noise_shape[-2], noise_shape[-1])

    def active(self, transformer_options) -> bool:
        sigmas = transformer_options.get("sigmas")
        if self.strength == 0:
            return False
        if sigmas is None:
            return True
        sigma = float(sigmas.flatten()[0])
        return self.sigma_end <= sigma <= self.sigma_start

    def _control_tokens(self, x, img_input, cond_or_uncond) -> torch.Tensor:
        batch = x.shape[0] // max(1, len(cond_or_uncond or [0]))
        h, w = x.shape[-2], x.shape[-1]
        if (batch, h, w) not in self._encoded:  # not sampled through ComfyUI's prepare: encode now, then reload what ran
            loaded = comfy.model_management.loaded_models(only_currently_used=True)
            self.control_input(batch, h, w)
            comfy.model_management.load_models_gpu(loaded)
        control = self.control_input(batch, h, w)
        control = control[torch.arange(x.shape[0]) % batch].to(img_input.device, img_input.dtype)
        control = comfy.ldm.common_dit.pad_to_patch_size(control, (2, 2))
        b, c, hh, ww = control.shape
        tokens = control.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2)
        tokens = self.cnet.module.control_all_x_embedder[PATCH](tokens)
        # the image's pad tokens (NextDiT pads to a multiple of 32) are the model's x_pad_token, as in the reference
        return torch.cat([tokens, img_input[:, tokens.shape[1]:]], dim=1)

    def __call__(self, kwargs):
        options = kwargs["transformer_options"]
        if kwargs.get("block_type") == "noise_refiner":
            return self._noise_refiner(kwargs, options)
        return self._double_block(kwargs, options)

    def _noise_refiner(self, kwargs, options):
        index = kwargs["block_index"]
        if index == 0:
            options[self._state_key] = self._refiner_stage(kwargs, options) if self.active(options) else None
        state = options.get(self._state_key)
        if state is None or index not in state["refiner_hints"]:
            return {}
        return {"img": kwargs["img"] + state["refiner_hints"][index]}

    def _refiner_stage(self, kwargs, options) -> dict:
        """The control branch up to the main layers: the refiner hints (2.x) and the control tokens after it."""
        module, img_input, pe, vec = self.cnet.module, kwargs["img_input"], kwargs["pe"], kwargs["vec"]
        tokens = self._control_tokens(kwargs["x"], img_input, options.get("cond_or_uncond"))
        hints = {}
        if self.cnet.refiner is None:
            for layer in module.control_noise_refiner:
                tokens = layer(tokens, None, pe, vec)
        else:
            layers = module.control_layers if self.cnet.refiner == "control_layers" else module.control_noise_refiner
            for i, layer in enumerate(layers):
                skip, tokens = layer(tokens, img_input, x_mask=None, freqs_cis=pe, adaln_input=vec)
                if i < 2:
                    hints[i] = skip * self.strength
        return {"refiner_hints": hints, "tokens": tokens, "cap_input": kwargs["txt"], "pe_img": pe}

    def _double_block(self, kwargs, options):
        state = options.get(self._state_key)
        index = kwargs["block_index"]
        if state is None or index not in self.places:
            return {}
        img, txt = kwargs["img"], kwargs["txt"]
        n_img = img.shape[1]
        if "main" not in state:  # the unified input, in the reference's order [image, caption]
            cap_input = state["cap_input"]
            positions = torch.zeros(1, cap_input.shape[1], 3, dtype=torch.float32, device=img.device)
            positions[:, :, 0] = torch.arange(cap_input.shape[1], dtype=torch.float32, device=img.device) + 1.0
            pe_cap = self.rope(positions).movedim(1, 2).to(state["pe_img"])
            state["main"] = torch.cat([state.pop("tokens"), cap_input], dim=1)
            state["x"] = torch.cat([kwargs["img_input"], cap_input], dim=1)
            state["pe"] = torch.cat([state["pe_img"], pe_cap], dim=1)
        layer = self.cnet.module.control_layers[self.places[index]]
        skip, state["main"] = layer(state["main"], state["x"], x_mask=None, freqs_cis=state["pe"], adaln_input=kwargs["vec"])
        hint = skip * self.strength
        return {"img": img + hint[:, :n_img], "txt": txt + hint[:, n_img:]}

    def prepare_wrapper(self, executor, model, noise_shape, conds, *args, **kwargs):
        self.prepare(noise_shape)
        return executor(model, noise_shape, conds, *args, **kwargs)


def _check(model, cnet: NativeControlNet, strength, start_percent, end_percent, resize, image, inpaint_image, mask) -> None:
    if not isinstance(cnet, NativeControlNet):
        raise ZImageInputError("controlnet", type(cnet).__name__, "a ControlNet from Z-Image ControlNet Loader", "connect Z-Image ControlNet Loader's output")
    if strength < 0 and strength != -1.0:
        raise ZImageInputError("strength", str(strength), "-1 (the version's default) or 0 to 4", "use -1, or a value from 0 upwards")
    if start_percent > end_percent:
        raise ZImageInputError("start_percent", f"{start_percent} after end_percent {end_percent}", "start ≤ end", "swap the two values")
    if resize not in ("crop", "stretch"):
        raise ZImageInputError("resize", repr(resize), "'crop' or 'stretch'", "pick one from the list")
    if image is None and not (cnet.inpaint_channels and inpaint_image is not None):
        raise ZImageInputError("image", "no hint image", "a hint image (or, for 2.x, an inpaint image)", "connect the control image")
    if (inpaint_image is not None or mask is not None) and not cnet.inpaint_channels:
        raise ZImageInputError("inpaint_image", f"an inpaint input for a Union {cnet.version} ControlNet",
                               "a 2.x ControlNet (33 input channels) for inpainting", "load Union 2.0 or 2.1, or disconnect the inpaint inputs")
    for name, value in (("image", image), ("inpaint_image", inpaint_image)):
        if value is not None and (value.ndim != 4 or value.shape[-1] < 3):
            raise ZImageInputError(name, f"a tensor of shape {tuple(value.shape)}", "an IMAGE [batch, height, width, 3]", "connect an image")
    if mask is not None and mask.ndim not in (2, 3):
        raise ZImageInputError("mask", f"a tensor of shape {tuple(mask.shape)}", "a MASK [batch, height, width]", "connect a mask")
    diffusion = model.get_model_object("diffusion_model")
    if not all(hasattr(diffusion, name) for name in ("noise_refiner", "rope_embedder", "x_pad_token")):
        raise ZImageInputError("model", f"a {type(diffusion).__name__} MODEL", "a Z-Image MODEL (NextDiT)", "load a Z-Image model")
    if getattr(diffusion, "dim", cnet.dim) != cnet.dim:
        raise ZImageInputError("controlnet", f"a ControlNet of width {cnet.dim}", f"width {diffusion.dim}, the MODEL's",
                               "use a Z-Image Fun ControlNet with this Z-Image model")


def apply_controlnet(model, cnet: NativeControlNet, vae, strength: float = -1.0, start_percent: float = 0.0, end_percent: float = 1.0,
                     resize: str = "crop", image=None, inpaint_image=None, mask=None):
    """A clone of ``model`` with this ControlNet's patches added (each call adds its own; the input MODEL is
    unchanged, and nothing is patched when an input is refused). ``strength`` −1 = the version's default."""
    _check(model, cnet, strength, start_percent, end_percent, resize, image, inpaint_image, mask)
    sampling = model.get_model_object("model_sampling")
    patch = ZImageControlPatch(cnet, vae, image, inpaint_image, mask, cnet.default_strength if strength == -1.0 else strength,
                               float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent)), resize,
                               model.get_model_object("diffusion_model").rope_embedder)
    patched = model.clone()
    patched.set_model_noise_refiner_patch(patch)
    patched.set_model_double_block_patch(patch)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, _KEY, patch.prepare_wrapper)
    return patched
