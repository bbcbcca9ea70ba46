"""Headless text-to-image with the pack's example workflow: writes a PNG.

With real weights (--transformer, --text-encoder, --vae, or --diffusers-folder) it renders the real
picture. With none, it uses the toy model that ships in train/toy_model/ (a tiny Z-Image trained on
the CPU on coloured shapes: prompts like "a red circle on a blue background", 64×64 pixels) and writes
two pictures: the 8-step Turbo one (--out) and the 2-step one with the distilled per-step LoRAs
(--out with _2step added). --random-demo uses random weights made from a seed instead (noise).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_TOKENIZER = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "qwen_tokenizer")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", default="A red fox sitting in fresh snow at sunrise, soft golden light, photograph.")
    p.add_argument("--out", default=os.path.join(ROOT, "out", "z_image.png"), help="PNG file to write")
    p.add_argument("--width", type=int, default=None, help="default: 1024 with real weights, 256 for the demo model")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--transformer", help="z_image_turbo_bf16.safetensors (or fp8), or a diffusers folder")
    p.add_argument("--text-encoder", help="qwen_3_4b.safetensors, or a diffusers folder")
    p.add_argument("--vae", help="ae.safetensors, or a diffusers folder")
    p.add_argument("--diffusers-folder", help="one Z-Image diffusers folder for all three")
    p.add_argument("--tokenizer", default=None, help="folder with vocab.json + merges.txt (default: the diffusers folder's, else ZIMAGE_TOKENIZER_DIR, else ../shared/fixtures/qwen_tokenizer)")
    p.add_argument("--demo-dir", default=os.path.join(ROOT, "out", "demo_models"), help="where --random-demo writes its random models")
    p.add_argument("--random-demo", action="store_true", help="random demo weights instead of the toy model (the picture is noise)")
    p.add_argument("--weight-dtype", default="default", help="default, bf16, fp16, fp32 or fp8_e4m3fn")
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import zimage_pack  # noqa: F401  (installed by scripts/setup_env.sh)
    from zimage_pack.loaders.demo_models import write_demo_models
    from zimage_pack.workflows.build import workflow_path

    tokenizer = args.tokenizer or os.environ.get("ZIMAGE_TOKENIZER_DIR") or DEFAULT_TOKENIZER
    if args.diffusers_folder:
        args.transformer = args.text_encoder = args.vae = os.path.abspath(args.diffusers_folder)
        tokenizer = args.tokenizer or os.path.join(args.diffusers_folder, "tokenizer")
    demo = not (args.transformer and args.text_encoder and args.vae)
    toy = demo and not args.random_demo
    if demo:
        if any((args.transformer, args.text_encoder, args.vae)):
            sys.exit("give all three of --transformer, --text-encoder and --vae (or --diffusers-folder), or none for the demo model")
        if toy:
            from zimage_pack.train.toy_models import toy_paths

            paths = toy_paths()
            print("no weights given: using the toy model (coloured shapes, 64x64) in", os.path.dirname(paths["transformer"]))
        else:
            paths = write_demo_models(args.demo_dir, tokenizer)
            print("no weights given: using random demo models made from a seed in", args.demo_dir)
        args.transformer, args.text_encoder, args.vae = paths["transformer"], paths["text_encoder"], paths["vae"]
    width = args.width or (64 if toy else 256 if demo else 1024)
    height = args.height or (64 if toy else 256 if demo else 1024)

    with open(workflow_path("z_image_turbo_text_to_image_api.json"), encoding="utf-8") as fh:
        prompt = json.load(fh)
    nodes = {node["class_type"]: node["inputs"] for node in prompt.values()}
    _fill(prompt, args, tokenizer, width, height, toy)
    nodes["ZImageTurboSampler"].update(seed=args.seed, steps=args.steps)
    final = _run(prompt, os.path.abspath(args.out))
    print(f"wrote {final} ({width}x{height}, {args.steps} steps, seed {args.seed})")
    if toy:  # the same prompt and seed in 2 steps with the per-step LoRAs distilled by zimage-distill (train/)
        from zimage_pack.train.outputs import lora_paths
        from zimage_pack.train.toy_models import TOY_DIR

        with open(workflow_path("z_image_turbo_2step_distilled_loras_api.json"), encoding="utf-8") as fh:
            two = json.load(fh)
        _fill(two, args, tokenizer, width, height, toy)
        loras = lora_paths(TOY_DIR)
        for node in two.values():
            if node["class_type"] == "ZImageLoraLoader":
                node["inputs"]["lora_name"] = loras["step1" if "1" in node["_meta"]["title"] else "step2"]
            if node["class_type"] == "ZImageTwoStepSampler":
                node["inputs"].update(seed=args.seed)
        stem, ext = os.path.splitext(final)
        second = _run({k: v for k, v in two.items() if not (v["class_type"] == "SaveImage" and "step1" in v["inputs"]["filename_prefix"])}, f"{stem}_2step{ext}")
        print(f"wrote {second} (2 steps, distilled per-step LoRAs)")
    return final


def _fill(prompt: dict, args, tokenizer: str, width: int, height: int, toy: bool) -> None:
    """The files, prompt and size into a workflow's nodes."""
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "ZImageTransformerLoader":
            inputs.update(model_name=os.path.abspath(args.transformer), weight_dtype=args.weight_dtype, compute_dtype="fp32" if toy else inputs["compute_dtype"])
        elif kind == "ZImageTextEncoderLoader":
            inputs.update(text_encoder_name=os.path.abspath(args.text_encoder), tokenizer_path=os.path.abspath(tokenizer), compute_dtype="fp32" if toy else inputs["compute_dtype"])
        elif kind == "ZImageVAELoader":
            inputs.update(vae_name=os.path.abspath(args.vae), compute_dtype="fp32" if toy else inputs["compute_dtype"])
        elif kind == "ZImageTextEncode":
            inputs.update(text=args.prompt)
        elif kind == "ZImageEmptyLatent":
            inputs.update(width=width, height=height, batch_size=args.batch_size)


def _run(prompt: dict, final: str) -> str:
    """Runs the graph; its (first) saved picture ends up at ``final``."""
    from zimage_pack.workflows.headless import run_prompt
    from zimage_pack.workflows.native_nodes import SaveImage

    out_dir, name = os.path.split(final)
    SaveImage.output_dir = out_dir
    for node in prompt.values():
        if node["class_type"] == "SaveImage":
            node["inputs"].update(filename_prefix=os.path.splitext(name)[0])
    _, ui = run_prompt(prompt, _classes_taking_paths())
    saved = [p for node_ui in ui.values() for p in node_ui.get("images", [])]
    os.replace(saved[0], final)
    return final


def _classes_taking_paths() -> dict:
    """The loaders' file lists are ComfyUI's folders; a script passes paths, so accept any string."""
    from zimage_pack.workflows.headless import all_node_classes

    classes = dict(all_node_classes())
    for name in ("ZImageTransformerLoader", "ZImageTextEncoderLoader", "ZImageVAELoader", "ZImageLoraLoader"):
        base = classes[name]

        def input_types(cls, _base=base):
            types = _base.INPUT_TYPES()
            for spec_name, spec in types["required"].items():
                if spec_name.endswith("_name") and isinstance(spec[0], list):
                    types["required"][spec_name] = ("STRING", spec[1])
            return types

        classes[name] = type(name, (base,), {"INPUT_TYPES": classmethod(input_types)})
    return classes


if __name__ == "__main__":
    main()
