"""How a picture says how it was made: the generation settings read off the queued graph, written
into PNG (and WebP) the way ComfyUI writes its own (``prompt`` / ``workflow``, so dragging the picture
onto the canvas restores the graph) and as the plain ``parameters`` text image sites read
(A1111 style), with SHA-256 hashes of the model, LoRA and ControlNet files. And read back.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from .errors import ZImageInputError
from .json_text import parse_json

_SAMPLERS = {"ZImageTurboSampler": "Z-Image Turbo (flow Euler)", "ZImageTwoStepSampler": "Z-Image 2-step",
             "ZImageTwinFlowSampler": "TwinFlow", "KSampler": "KSampler", "KSamplerAdvanced": "KSampler",
             "ZImagePromptListGenerate": "Z-Image Turbo (flow Euler)", "SamplerCustomAdvanced": "SamplerCustomAdvanced"}
# native model loaders: node → (its file input, the models folder)
_MODEL_LOADERS = {"ZImageTransformerLoader": ("model_name", "diffusion_models"), "UNETLoader": ("unet_name", "diffusion_models"),
                  "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"), "ZImageStepBundleLoader": ("bundle_name", "zimage_bundles")}
# LoRA nodes: node → (file input, strength input)
_LORA_NODES = {"ZImageLoraLoader": ("lora_name", "strength"), "LoraLoader": ("lora_name", "strength_model"),
               "LoraLoaderModelOnly": ("lora_name", "strength_model")}
_HASHES: dict[tuple, str] = {}
EXIF_MODEL, EXIF_MAKE, EXIF_IFD, EXIF_USER_COMMENT = 0x0110, 0x010F, 0x8769, 0x9286


def file_sha256(path: str) -> str:
    """SHA-256 of a file, computed once per (file, size, mtime) in this process."""
    if os.path.isdir(path):
        return ""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _source(graph: dict, value):
    """The node a link points at (``[id, slot]``), else None."""
    if isinstance(value, list) and len(value) == 2 and str(value[0]) in graph:
        return str(value[0]), graph[str(value[0])]
    return None


def _text(graph: dict, value, depth: int = 0) -> str | None:
    if isinstance(value, str):
        return value
    found = _source(graph, value)
    if found is None or depth > 8:
        return None
    _, node = found
    for name in ("text", "string", "value", "text_g", "positive", "conditioning"):
        if name in node.get("inputs", {}):
            got = _text(graph, node["inputs"][name], depth + 1)
            if got is not None:
                return got
    return None


def _upstream(graph: dict, node_id: str, accept: Callable[[dict], bool], depth: int = 0):
    """The first node upstream of ``node_id`` (breadth over its linked inputs) that ``accept`` takes."""
    queue, seen = [node_id], set()
    while queue:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        node = graph.get(current, {})
        if current != node_id and accept(node):
            return current, node
        for value in node.get("inputs", {}).values():
            found = _source(graph, value)
            if found is not None:
                queue.append(found[0])
    return None


def generation_parameters(graph: dict, image_node: str, path_of: Callable[[str, str], str | None]) -> dict:
    """Settings of the picture made by ``image_node``'s input, read off the API graph. ``path_of(folder,
    name)`` finds a model file for hashing (None when it cannot)."""
    params: dict = {"loras": [], "controlnets": []}
    itself = graph.get(image_node, {})  # a node that samples and saves (the prompt-list generator)
    found = (image_node, itself) if itself.get("class_type") in _SAMPLERS else _upstream(graph, image_node, lambda n: n.get("class_type") in _SAMPLERS)
    if found is None:
        return params
    sampler_id, sampler = found
    inputs = sampler["inputs"]
    params["sampler"] = _SAMPLERS[sampler["class_type"]]
    for key in ("seed", "steps", "nfe", "cfg", "shift", "denoise", "sigma_mid", "step2_rule", "stochastic_ratio", "sampler_name", "scheduler"):
        if key in inputs and not isinstance(inputs[key], list):
            params[key] = inputs[key]
    if "noise_seed" in inputs and not isinstance(inputs["noise_seed"], list):  # KSamplerAdvanced
        params["seed"] = inputs["noise_seed"]
    model_links = [inputs[k] for k in ("model", "step1_model", "step2_model") if k in inputs]
    if sampler["class_type"] == "SamplerCustomAdvanced":  # its seed, prompt and model sit on its noise and guider nodes
        noise, guider = _source(graph, inputs.get("noise")), _source(graph, inputs.get("guider"))
        if noise is not None and not isinstance(noise[1]["inputs"].get("noise_seed"), list):
            params["seed"] = noise[1]["inputs"].get("noise_seed")
        if guider is not None:
            inputs = {**guider[1]["inputs"], "latent_image": inputs.get("latent_image")}
            inputs.setdefault("positive", inputs.get("conditioning"))
            model_links = [inputs["model"]] if "model" in inputs else []
    params["prompt"] = _text(graph, inputs.get("positive")) or ""
    negative = _text(graph, inputs.get("negative")) if "negative" in inputs else None
    if negative is not None:
        params["negative"] = negative
    latent = _source(graph, inputs.get("latent_image"))
    if latent is not None and {"width", "height"} <= set(latent[1].get("inputs", {})):
        params["size"] = (latent[1]["inputs"]["width"], latent[1]["inputs"]["height"])
    chain = list(reversed(model_links))
    while chain:
        link = chain.pop()
        found = _source(graph, link)
        if found is None:
            continue
        _, node = found
        kind, node_inputs = node.get("class_type"), node.get("inputs", {})
        if kind in _MODEL_LOADERS:
            name_input, folder = _MODEL_LOADERS[kind]
            params["model"] = node_inputs.get(name_input)
            params["model_hash"] = _hash(path_of, folder, params["model"])
            continue
        if kind in _LORA_NODES:
            name_input, strength_input = _LORA_NODES[kind]
            params["loras"].append(_entry(path_of, "loras", node_inputs.get(name_input), node_inputs.get(strength_input)))
        if kind == "ModelSamplingAuraFlow" and "shift" not in params and not isinstance(node_inputs.get("shift"), list):
            params["shift"] = node_inputs.get("shift")  # the native template's shift, on the MODEL
        if kind == "ZImageFunControlnet":  # native ComfyUI's Fun ControlNet: a patch from ModelPatchLoader
            patch = _source(graph, node_inputs.get("model_patch"))
            name = patch[1]["inputs"].get("name") if patch else None
            params["controlnets"].append({**_entry(path_of, "model_patches", name, node_inputs.get("strength")), "start": 0.0, "end": 1.0})
        if kind == "ZImageLoraStack":
            for i in range(1, 5):
                name = node_inputs.get(f"lora_{i}")
                if name and name != "None":
                    params["loras"].append(_entry(path_of, "loras", name, node_inputs.get(f"strength_{i}")))
        if kind == "ZImageControlNetApply":
            cnet = _source(graph, node_inputs.get("controlnet"))
            name = cnet[1]["inputs"].get("controlnet_name") if cnet else None
            params["controlnets"].append({**_entry(path_of, "model_patches", name, node_inputs.get("strength")),
                                          "start": node_inputs.get("start_percent"), "end": node_inputs.get("end_percent")})
        for key in ("model", "step1_model", "step2_model"):
            if key in node_inputs:
                chain.append(node_inputs[key])
    params["loras"].reverse()  # in the order they were applied
    params["controlnets"].reverse()
    return params


def _entry(path_of, folder: str, name, strength) -> dict:
    return {"name": name, "strength": strength, "hash": _hash(path_of, folder, name)}


def _hash(path_of, folder: str, name) -> str:
    if not isinstance(name, str):
        return ""
    path = path_of(folder, name)
    return file_sha256(path) if path and os.path.exists(path) else ""


def parameters_text(params: dict) -> str:
    """The A1111-style ``parameters`` text (prompt, ``Negative prompt:``, then ``Key: value`` pairs)."""
    lines = [params.get("prompt", "")]
    if params.get("negative"):
        lines.append(f"Negative prompt: {params['negative']}")
    fields = []
    steps = params.get("nfe", params.get("steps"))
    for label, value in (("Steps", steps), ("Sampler", params.get("sampler_name", params.get("sampler"))), ("Schedule type", params.get("scheduler")),
                         ("CFG scale", params.get("cfg", 1.0) if steps else None),
                         ("Seed", params.get("seed")), ("Size", "x".join(map(str, params["size"])) if "size" in params else None),
                         ("Shift", params.get("shift")), ("Denoising strength", params.get("denoise") if params.get("denoise", 1.0) != 1.0 else None),
                         ("Model hash", params.get("model_hash", "")[:10] or None), ("Model", params.get("model"))):
        if value is not None:
            fields.append(f"{label}: {value}")
    if params.get("loras"):
        fields.append('Lora hashes: "' + ", ".join(f"{_stem(e['name'])}: {e['hash'][:12]}" for e in params["loras"]) + '"')
        fields.append('LoRAs: "' + ", ".join(f"{_stem(e['name'])}: {e['strength']}" for e in params["loras"]) + '"')
    if params.get("controlnets"):
        fields.append('ControlNets: "' + ", ".join(f"{_stem(e['name'])}: {e['strength']} ({e['start']}-{e['end']})" for e in params["controlnets"]) + '"')
    fields.append("Version: Z-Image nodes")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def _stem(name) -> str:
    return os.path.splitext(os.path.basename(str(name)))[0]


def save_image(pixels: np.ndarray, path: str, prompt: dict | None, extra: dict | None, parameters: str) -> None:
    """``pixels`` [H, W, 3] uint8 to PNG or WebP (by ``path``'s ending), with ComfyUI's chunks."""
    image = Image.fromarray(pixels)
    if path.lower().endswith(".webp"):
        exif = image.getexif()
        if prompt is not None:
            exif[EXIF_MODEL] = "prompt:" + json.dumps(prompt)
        tag = EXIF_MAKE
        for key, value in (extra or {}).items():  # as ComfyUI's own WebP saver numbers them
            exif[tag] = f"{key}:{json.dumps(value)}"
            tag -= 1
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = b"UNICODE\x00" + parameters.encode("utf-16-be")
        image.save(path, exif=exif, lossless=False, quality=90)
        return
    info = PngInfo()
    info.add_text("parameters", parameters)
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra or {}).items():
        info.add_text(key, json.dumps(value))
    image.save(path, pnginfo=info, compress_level=4)


def read_metadata(path: str, shown_name: str | None = None) -> dict:
    """{"parameters": text, "prompt": dict, "workflow": dict} of a PNG or WebP written above (or by
    ComfyUI). A file that is no picture, or a chunk that is no JSON, is the pack's error naming the
    file as ``shown_name`` (the name the user picked, not the server's path)."""
    name = shown_name or os.path.basename(path)
    try:
        image = Image.open(path)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise ZImageInputError("image", f"'{name}', which cannot be read as a picture ({type(exc).__name__})", "a PNG or WebP",
                               "pick a picture saved by ComfyUI or this pack") from None
    with image:
        out: dict = {}
        if image.format == "PNG":
            for key, value in image.info.items():
                if key == "parameters":
                    out[key] = value
                elif key in ("prompt", "workflow"):
                    out[key] = parse_json(value, "image", f"the '{key}' text of '{name}'", "the picture's metadata is damaged: pick another picture")
            return out
        exif = image.getexif()
        for tag in range(EXIF_MAKE - 8, EXIF_MODEL + 1):
            value = exif.get(tag)
            if isinstance(value, str) and ":" in value:
                key, _, body = value.partition(":")
                if key in ("prompt", "workflow"):
                    out[key] = parse_json(body, "image", f"the '{key}' EXIF text of '{name}'", "the picture's metadata is damaged: pick another picture")
        comment = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
        if isinstance(comment, bytes) and comment.startswith(b"UNICODE\x00"):
            out["parameters"] = comment[8:].decode("utf-16-be", errors="replace")
        return out
