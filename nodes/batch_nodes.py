"""Batches inside one queued prompt: a prompt list (ComfyUI list outputs) and a node that makes and
saves one picture per item on native MODEL, CLIP and VAE."""

from __future__ import annotations

import hashlib

from comfy_api.latest import io

from ..loaders.confined_paths import check_output_prefix
from ..loaders.errors import ZImageInputError
from ..loaders.image_metadata import generation_parameters, parameters_text
from ..samplers.latents import empty_latent
from ..samplers.memory_budget import check_prompts_fit
from ..samplers.prompt_list import (MAX_PROMPT_FILE_BYTES, MAX_PROMPT_ROWS, MAX_SEED, PROMPT_FILE_TYPES, SEED_MODES, PromptItem, assign_seeds,
                                    parse_prompt_lines, read_prompt_file, run_items)
from ..samplers.schedules import check_steps
from . import comfy_services as services
from .image_nodes import save_pictures, shown
from .native_sampling import encode_text, sample_turbo, text_tokens
from .sampling_nodes import size_inputs
from .types import CATEGORY

# Qwen3-4B's hidden size: what one token's features take in float32
TEXT_FEATURE_BYTES = 2560 * 4


def _prompt_file(name: str) -> str:
    return services.input_file(name, "file", "a .txt, .csv or .jsonl file")


class ZImagePromptList(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImagePromptList", display_name="Z-Image Prompt List (batch, seeds)", category=f"{CATEGORY}/batch",
            description=("A list of prompts, one generation each inside one queued prompt: typed one per line, or a .txt / .csv / .jsonl "
                         "file from ComfyUI's input folder (csv/jsonl: a 'prompt' column, optional 'negative' and 'seed'). "
                         "Seeds: fixed, increment per item, or random (drawn from the seed, so the list is reproducible; every "
                         "seed is written into its picture). Connect to Z-Image Prompt List Generate (flat memory, saves each picture "
                         "as it is done), or to any node: ComfyUI then runs that node once per item."),
            search_aliases=["prompt list", "batch prompts", "seed sweep", "prompts from file"],
            inputs=[
                io.String.Input("prompts", multiline=True, default="a red fox in snow\na lighthouse at dusk", tooltip="One prompt per line ('#' lines skipped). Ignored when a file is given."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True, tooltip="The seed, the first seed (increment) or where random seeds are drawn from."),
                io.Combo.Input("seed_mode", options=list(SEED_MODES), default="increment", tooltip="fixed: every item the same seed. increment: seed + item index. random: a recorded random seed per item. A file's own 'seed' column wins."),
                io.Int.Input("repeat", default=1, min=1, max=1000, tooltip="Runs of the whole list (a seed sweep: 1 prompt × 10 repeats with increment = 10 seeds)."),
                io.Combo.Input("file", options=[""] + services.input_files(PROMPT_FILE_TYPES), default="", optional=True,
                               tooltip=f"A .txt, .csv or .jsonl file in ComfyUI's input folder (at most {MAX_PROMPT_FILE_BYTES // 2**20} MiB and {MAX_PROMPT_ROWS:,} prompts); empty = the typed prompts. Put the file into the input folder and refresh to see it here."),
                io.String.Input("negative", multiline=True, default="", optional=True, tooltip="Negative prompt for every item without its own (Base with cfg > 1)."),
            ],
            outputs=[io.String.Output(display_name="prompt", is_output_list=True, tooltip="One prompt per item (a list)."),
                     io.String.Output(display_name="negative", is_output_list=True, tooltip="Each item's negative prompt (a list; '' when none)."),
                     io.Int.Output(display_name="seed", is_output_list=True, tooltip="Each item's seed (a list)."),
                     io.Int.Output(display_name="count", tooltip="How many items.")],
        )

    @classmethod
    def fingerprint_inputs(cls, prompts, seed, seed_mode, repeat=1, file="", negative=""):
        if not file:
            return ""
        try:  # an edited file reruns the list
            with open(_prompt_file(file), "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except (OSError, ZImageInputError):
            return ""

    @classmethod
    def execute(cls, prompts, seed, seed_mode, repeat=1, file="", negative="") -> io.NodeOutput:
        items = read_prompt_file(_prompt_file(file), shown_name=file) if file else parse_prompt_lines(prompts)
        if not items:
            raise ZImageInputError("prompts", "no prompt (empty text or file)", "at least one prompt", "type one prompt per line, or give a file")
        # before the list is multiplied out: ComfyUI keeps every item, and a text encoder runs once per item
        check_prompts_fit([i.prompt + i.negative for i in items], "prompts, file, repeat", repeat)
        items = assign_seeds(items * repeat, seed, seed_mode)
        return io.NodeOutput([i.prompt for i in items], [i.negative or negative for i in items], [i.seed for i in items], len(items))


def _single(values, name):
    """With is_input_list every input comes as a list; settings must be one value."""
    if len(values) != 1:
        raise ZImageInputError(name, f"a list of {len(values)} values", "one value", f"connect a single {name}, not a list")
    return values[0]


class ZImagePromptListGenerate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImagePromptListGenerate", display_name="Z-Image Prompt List Generate (saves each)", category=f"{CATEGORY}/batch",
            description=("Makes and saves one picture per item of a prompt list (Turbo sampler + VAE decode + save with metadata), in one "
                         "queued prompt, on the MODEL, CLIP and VAE of any loader. Each distinct prompt is encoded once; each picture is "
                         "written as soon as it is done and then dropped, so memory stays flat over long lists; Cancel stops between items "
                         "and keeps what is saved."),
            search_aliases=["batch generate", "prompt list sampler", "generate from list"],
            inputs=[
                io.Model.Input("model", tooltip="A Z-Image MODEL (LoRAs and ControlNets applied as usual)."),
                io.Clip.Input("clip", tooltip="The Z-Image CLIP (Load CLIP type lumina2, or Z-Image Text Encoder Loader)."),
                io.Vae.Input("vae", tooltip="The FLUX.1 VAE (Load VAE, or Z-Image VAE Loader)."),
                io.String.Input("prompt", force_input=True, tooltip="From Z-Image Prompt List."),
                io.Int.Input("seed", force_input=True, tooltip="From Z-Image Prompt List."),
                *size_inputs(),
                io.Int.Input("steps", default=8, min=1, max=200, tooltip="Model calls per picture. Turbo: 8."),
                io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.01, tooltip="Timestep shift. Z-Image: 3.0."),
                io.String.Input("filename_prefix", default="z-image-batch", tooltip="File name start in the output folder (subfolders allowed: batch/z-image; no '..', no hidden names)."),
                io.Combo.Input("format", options=["png", "webp"], default="png", tooltip="png: lossless. webp: smaller; metadata in EXIF."),
                io.String.Input("negative", force_input=True, optional=True, tooltip="From Z-Image Prompt List; used when cfg > 1."),
                io.Float.Input("cfg", default=1.0, min=1.0, max=30.0, step=0.1, optional=True, tooltip="1.0 = no CFG (Turbo). Base: 3-5."),
            ],
            outputs=[io.String.Output(display_name="files", is_output_list=True, tooltip="The saved files (a list of paths).")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo, io.Hidden.unique_id],
            is_input_list=True, is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, prompt, seed, width, height, steps, shift, filename_prefix, format, negative=None, cfg=(1.0,)) -> io.NodeOutput:
        model, clip, vae = _single(model, "model"), _single(clip, "clip"), _single(vae, "vae")
        width, height, steps, shift = _single(width, "width"), _single(height, "height"), _single(steps, "steps"), _single(shift, "shift")
        prefix, extension, cfg = _single(filename_prefix, "filename_prefix"), _single(format, "format"), _single(cfg, "cfg")
        graph, extra, node_id = cls.hidden.prompt, cls.hidden.extra_pnginfo, cls.hidden.unique_id
        check_steps(steps)
        if len(seed) not in (1, len(prompt)):
            raise ZImageInputError("seed", f"{len(seed)} seeds for {len(prompt)} prompts", "one seed per prompt", "connect both from the same Z-Image Prompt List")
        check_output_prefix(prefix)
        negatives = list(negative) if negative else [""] * len(prompt)
        items = [PromptItem(p, negatives[i % len(negatives)], seed[i % len(seed)]) for i, p in enumerate(prompt)]
        # every distinct prompt is encoded before the first picture (run_items): those encodings must fit
        distinct = list(dict.fromkeys([i.prompt for i in items] + ([i.negative for i in items] if cfg != 1.0 else [])))
        check_prompts_fit(distinct, "prompt", tokens_of=lambda text: text_tokens(clip, text), bytes_per_token=TEXT_FEATURE_BYTES)
        latent = {"samples": empty_latent(width, height, 1)}
        base = generation_parameters(graph or {}, str(node_id), services.find_model) if graph and node_id is not None else {}
        files, pictures = [], []

        def one(index, item, positive, negative_cond):
            out = sample_turbo(model, positive, negative_cond, latent, item.seed, steps, shift, 1.0, cfg)
            image = vae.decode(out["samples"])
            params = {**base, "sampler": "Z-Image Turbo (flow Euler)", "prompt": item.prompt, "seed": item.seed, "steps": steps, "shift": shift,
                      "cfg": cfg, "size": (width, height)}
            if cfg != 1.0:
                params["negative"] = item.negative
            saved = save_pictures(image.reshape(-1, *image.shape[-3:]), prefix, extension, graph, extra, parameters_text(params))
            pictures.extend(saved)
            files.extend(entry["path"] for entry in saved)

        run_items(items, lambda text: encode_text(clip, text), one, services.check_interrupt, with_negative=cfg != 1.0)
        return io.NodeOutput(files, ui={"images": shown(pictures)})
