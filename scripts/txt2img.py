"""Headless text-to-image with the pack's example workflow: writes a PNG.

With real weights (--transformer, --text-encoder, --vae, or --diffusers-folder) it renders the real
picture. With none, it writes small demo models made from a seed and runs the same path end to end
(the picture is noise-like: the demo weights are random).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

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
    p.add_argument("--demo-dir", default=os.path.join(ROOT, "out", "demo_models"), help="where the demo models are written when no weights are given")
    p.add_argument("--weight-dtype", default="default", help="default, bf16, fp16, fp32 or fp8_e4m3fn")
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import zimage_pack  # noqa: F401  (installed by scripts/setup_env.sh)
    from zimage_pack.loaders.demo_models import write_demo_models
    from zimage_pack.workflows.build import workflow_path
    from zimage_pack.workflows.headless import run_prompt
    from zimage_pack.workflows.native_nodes import SaveImage

    tokenizer = args.tokenizer or os.environ.get("ZIMAGE_TOKENIZER_DIR") or DEFAULT_TOKENIZER
    if args.diffusers_folder:
        args.transformer = args.text_encoder = args.vae = os.path.abspath(args.diffusers_folder)
        tokenizer = args.tokenizer or os.path.join(args.diffusers_folder, "tokenizer")
    demo = not (args.transformer and args.text_encoder and args.vae)
    if demo:
        if any((args.transformer, args.text_encoder, args.vae)):
            sys.exit("give all three of --transformer, --text-encoder and --vae (or --diffusers-folder), or none for the demo model")
        paths = write_demo_models(args.demo_dir, tokenizer)
        print("no weights given: using demo models made from a seed in", args.demo_dir)
        args.transformer, args.text_encoder, args.vae = paths["transformer"], paths["text_encoder"], paths["vae"]
    width = args.width or (256 if demo else 1024)
    height = args.height or (256 if demo else 1024)

    with open(workflow_path("z_image_turbo_text_to_image_api.json"), encoding="utf-8") as fh:
        prompt = json.load(fh)
    nodes = {node["class_type"]: node["inputs"] for node in prompt.values()}
    nodes["ZImageTransformerLoader"].update(model_name=os.path.abspath(args.transformer), weight_dtype=args.weight_dtype)
    nodes["ZImageTextEncoderLoader"].update(text_encoder_name=os.path.abspath(args.text_encoder), tokenizer_path=os.path.abspath(tokenizer))
    nodes["ZImageVAELoader"].update(vae_name=os.path.abspath(args.vae))
    nodes["ZImageTextEncode"].update(text=args.prompt)
    nodes["ZImageEmptyLatent"].update(width=width, height=height, batch_size=args.batch_size)
    nodes["ZImageTurboSampler"].update(seed=args.seed, steps=args.steps)
    out_dir, name = os.path.split(os.path.abspath(args.out))
    SaveImage.output_dir = out_dir
    nodes["SaveImage"].update(filename_prefix=os.path.splitext(name)[0])

    classes = _classes_taking_paths()
    start = time.perf_counter()
    _, ui = run_prompt(prompt, classes)
    saved = [p for node_ui in ui.values() for p in node_ui.get("images", [])]
    final = os.path.abspath(args.out)
    os.replace(saved[0], final)
    print(f"wrote {final} ({width}x{height}, {args.steps} steps, seed {args.seed}) in {time.perf_counter() - start:.1f} s")
    for extra in saved[1:]:
        print("wrote", extra)
    return final


def _classes_taking_paths() -> dict:
    """The loaders' file lists are ComfyUI's folders; a script passes paths, so accept any string."""
    from zimage_pack.workflows.headless import all_node_classes

    classes = dict(all_node_classes())
    for name in ("ZImageTransformerLoader", "ZImageTextEncoderLoader", "ZImageVAELoader"):
        base = classes[name]

        def input_types(cls, _base=base):
            types = _base.INPUT_TYPES()
            for spec_name, spec in types["required"].items():
                if spec_name.endswith("_name"):
                    types["required"][spec_name] = ("STRING", spec[1])
            return types

        classes[name] = type(name, (base,), {"INPUT_TYPES": classmethod(input_types)})
    return classes


if __name__ == "__main__":
    main()
