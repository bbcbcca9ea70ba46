"""Batches inside one queued prompt: a prompt list (ComfyUI list outputs) and a node that makes and
saves one picture per item."""

from __future__ import annotations

import hashlib

from ..loaders.confined_paths import check_output_prefix
from ..loaders.errors import ZImageInputError
from ..loaders.image_metadata import generation_parameters, parameters_text
from ..loaders.vae import decode
from ..samplers.conditioning import features_from_conditioning
from ..samplers.latents import empty_latent
from ..loaders.text_encoder import tokenize_prompt
from ..samplers.memory_budget import check_prompts_fit, check_vae_fits
from ..samplers.prompt_list import (MAX_PROMPT_FILE_BYTES, MAX_PROMPT_ROWS, MAX_SEED, PROMPT_FILE_TYPES, SEED_MODES, PromptItem, assign_seeds,
                                    parse_prompt_lines, read_prompt_file, run_items)
from ..samplers.schedules import check_steps
from ..samplers.text import encode_to_conditioning
from ..samplers.turbo import Guidance, sample
from . import comfy_services as services
from .image_nodes import save_pictures
from .sampling_nodes import MAX_RESOLUTION
from .types import CATEGORY, ZIMAGE_MODEL, ZIMAGE_TEXT_ENCODER, ZIMAGE_VAE


def _prompt_file(name: str) -> str:
    return services.input_file(name, "file", "a .txt, .csv or .jsonl file")


class ZImagePromptList:
    DESCRIPTION = ("A list of prompts, one generation each inside one queued prompt: typed one per line, or a .txt / .csv / .jsonl "
                   "file from ComfyUI's input folder (csv/jsonl: a 'prompt' column, optional 'negative' and 'seed'). "
                   "Seeds: fixed, increment per item, or random (drawn from the seed, so the list is reproducible; every "
                   "seed is written into its picture). Connect to Z-Image Prompt List Generate (flat memory, saves each picture "
                   "as it is done), or to any node: ComfyUI then runs that node once per item.")
    CATEGORY = f"{CATEGORY}/batch"
    RETURN_TYPES = ("STRING", "STRING", "INT", "INT")
    RETURN_NAMES = ("prompt", "negative", "seed", "count")
    OUTPUT_IS_LIST = (True, True, True, False)
    OUTPUT_TOOLTIPS = ("One prompt per item (a list).", "Each item's negative prompt (a list; '' when none).", "Each item's seed (a list).", "How many items.")
    FUNCTION = "make"
    SEARCH_ALIASES = ["prompt list", "batch prompts", "seed sweep", "prompts from file"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "prompts": ("STRING", {"multiline": True, "default": "a red fox in snow\na lighthouse at dusk", "tooltip": "One prompt per line ('#' lines skipped). Ignored when a file is given."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True, "tooltip": "The seed, the first seed (increment) or where random seeds are drawn from."}),
            "seed_mode": (list(SEED_MODES), {"default": "increment", "tooltip": "fixed: every item the same seed. increment: seed + item index. random: a recorded random seed per item. A file's own 'seed' column wins."}),
            "repeat": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip": "Runs of the whole list (a seed sweep: 1 prompt × 10 repeats with increment = 10 seeds)."}),
        }, "optional": {
            "file": ([""] + services.input_files(PROMPT_FILE_TYPES), {"default": "", "tooltip": f"A .txt, .csv or .jsonl file in ComfyUI's input folder (at most {MAX_PROMPT_FILE_BYTES // 2**20} MiB and {MAX_PROMPT_ROWS:,} prompts); empty = the typed prompts. Put the file into the input folder and refresh to see it here."}),
            "negative": ("STRING", {"multiline": True, "default": "", "tooltip": "Negative prompt for every item without its own (Base with cfg > 1)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, prompts, seed, seed_mode, repeat=1, file="", negative=""):
        if not file:
            return ""
        try:  # an edited file reruns the list
            with open(_prompt_file(file), "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except (OSError, ZImageInputError):
            return ""

    def make(self, prompts, seed, seed_mode, repeat=1, file="", negative=""):
        items = read_prompt_file(_prompt_file(file), shown_name=file) if file else parse_prompt_lines(prompts)
        if not items:
            raise ZImageInputError("prompts", "no prompt (empty text or file)", "at least one prompt", "type one prompt per line, or give a file")
        # before the list is multiplied out: ComfyUI keeps every item, and a text encoder runs once per item
        check_prompts_fit([i.prompt + i.negative for i in items], "prompts, file, repeat", repeat)
        items = assign_seeds(items * repeat, seed, seed_mode)
        return ([i.prompt for i in items], [i.negative or negative for i in items], [i.seed for i in items], len(items))


def _single(values, name):
    """INPUT_IS_LIST hands every input over as a list; settings must be one value."""
    if len(values) != 1:
        raise ZImageInputError(name, f"a list of {len(values)} values", "one value", f"connect a single {name}, not a list")
    return values[0]


class ZImagePromptListGenerate:
    DESCRIPTION = ("Makes and saves one picture per item of a prompt list (Turbo sampler + VAE decode + save with metadata), in one "
                   "queued prompt. Each distinct prompt is encoded once; each picture is written as soon as it is done and "
                   "then dropped, so memory stays flat over long lists; Cancel stops between items and keeps what is saved.")
    CATEGORY = f"{CATEGORY}/batch"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("files",)
    OUTPUT_IS_LIST = (True,)
    INPUT_IS_LIST = True
    OUTPUT_TOOLTIPS = ("The saved files (a list of paths).",)
    OUTPUT_NODE = True
    FUNCTION = "generate"
    SEARCH_ALIASES = ["batch generate", "prompt list sampler", "generate from list"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (ZIMAGE_MODEL, {"tooltip": "From Z-Image Transformer Loader (LoRAs, ControlNets applied as usual)."}),
            "text_encoder": (ZIMAGE_TEXT_ENCODER, {"tooltip": "From Z-Image Text Encoder Loader."}),
            "vae": (ZIMAGE_VAE, {"tooltip": "From Z-Image VAE Loader."}),
            "prompt": ("STRING", {"forceInput": True, "tooltip": "From Z-Image Prompt List."}),
            "seed": ("INT", {"forceInput": True, "tooltip": "From Z-Image Prompt List."}),
            "width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16, "tooltip": "Pixels; a multiple of 16."}),
            "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16, "tooltip": "Pixels; a multiple of 16."}),
            "steps": ("INT", {"default": 8, "min": 1, "max": 200, "tooltip": "Transformer calls per picture. Turbo: 8."}),
            "shift": ("FLOAT", {"default": 3.0, "min": 0.01, "max": 100.0, "step": 0.01, "tooltip": "Timestep shift. Z-Image: 3.0."}),
            "filename_prefix": ("STRING", {"default": "z-image-batch", "tooltip": "File name start in the output folder (subfolders allowed: batch/z-image; no '..', no hidden names)."}),
            "format": (["png", "webp"], {"default": "png", "tooltip": "png: lossless. webp: smaller; metadata in EXIF."}),
        }, "optional": {
            "negative": ("STRING", {"forceInput": True, "tooltip": "From Z-Image Prompt List; used when cfg > 1."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1, "tooltip": "1.0 = no CFG (Turbo). Base: 3-5."}),
        }, "hidden": {"graph": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}}

    def generate(self, model, text_encoder, vae, prompt, seed, width, height, steps, shift, filename_prefix, format,
                 negative=None, cfg=(1.0,), graph=(None,), extra_pnginfo=(None,), unique_id=(None,)):
        model, text_encoder, vae = _single(model, "model"), _single(text_encoder, "text_encoder"), _single(vae, "vae")
        width, height, steps, shift = _single(width, "width"), _single(height, "height"), _single(steps, "steps"), _single(shift, "shift")
        prefix, extension, cfg = _single(filename_prefix, "filename_prefix"), _single(format, "format"), _single(cfg, "cfg")
        graph, extra, node_id = graph[0], extra_pnginfo[0], unique_id[0]
        check_steps(steps)
        if len(seed) not in (1, len(prompt)):
            raise ZImageInputError("seed", f"{len(seed)} seeds for {len(prompt)} prompts", "one seed per prompt", "connect both from the same Z-Image Prompt List")
        check_output_prefix(prefix)
        negatives = list(negative) if negative else [""] * len(prompt)
        items = [PromptItem(p, negatives[i % len(negatives)], seed[i % len(seed)]) for i, p in enumerate(prompt)]
        # every distinct prompt is encoded before the first picture (run_items): those encodings must fit
        distinct = list(dict.fromkeys([i.prompt for i in items] + ([i.negative for i in items] if cfg != 1.0 else [])))
        check_prompts_fit(distinct, "prompt", tokens_of=lambda text: len(tokenize_prompt(text_encoder.tokenizer, text)),
                          bytes_per_token=text_encoder.hidden_size * 4)
        latent = empty_latent(width, height, 1)
        base = generation_parameters(graph or {}, str(node_id), services.find_model) if graph and node_id is not None else {}
        files, shown = [], []
        progress = services.Progress(len(items) * steps, services.compute_device())  # one bar over the whole list

        def encode(text):
            services.to_compute_device(text_encoder.model)
            return encode_to_conditioning(text_encoder, text)

        def one(index, item, positive, negative_cond):
            guidance = Guidance(cfg, 1.0, 0.0, features_from_conditioning(negative_cond, model.cap_feat_dim, 1, "negative")) if cfg != 1.0 else None
            device = services.prepare_model_for_sampling(model, 1, latent.shape[2], latent.shape[3], cfg=guidance is not None)
            out = sample(model, features_from_conditioning(positive, model.cap_feat_dim, 1, "prompt"), latent, item.seed, steps, shift, 1.0, guidance,
                         on_step=lambda step, total, x0: progress(index * steps + step, len(items) * steps, x0), check_interrupt=services.check_interrupt)
            check_vae_fits(vae, height, width, 1, 0, True, device)
            services.to_compute_device(vae.model)
            image = decode(vae, out, 0)
            params = {**base, "sampler": "Z-Image Turbo (flow Euler)", "prompt": item.prompt, "seed": item.seed, "steps": steps, "shift": shift,
                      "cfg": cfg, "size": (width, height)}
            if cfg != 1.0:
                params["negative"] = item.negative
            saved = save_pictures(image, prefix, extension, graph, extra, parameters_text(params))
            shown.extend(saved)
            files.extend(entry["path"] for entry in saved)

        run_items(items, encode, one, services.check_interrupt, with_negative=cfg != 1.0)
        return {"ui": {"images": [{k: v for k, v in s.items() if k != "path"} for s in shown]}, "result": (files,)}
