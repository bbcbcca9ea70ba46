"""Headless text-to-image with the pack's engine (no ComfyUI): writes a PNG.

With real weights (--transformer, --text-encoder, --vae, or --diffusers-folder) it renders the real
picture. With none, it uses the toy model that ships in train/toy_model/ (a tiny Z-Image trained on
the CPU on coloured shapes: prompts like "a red circle on a blue background", 64x64 pixels, with its
own tokenizer) and writes two pictures: the 8-step Turbo one (--out) and the 2-step one with the
distilled per-step LoRAs (--out with _2step added). --random-demo uses random weights made from a seed
instead (noise).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROG = "scripts/run.sh"
MAX_SIZE = 16384  # the Empty Latent node's limit
MAX_STEPS = 200  # the Turbo sampler node's limit
MAX_BATCH = 64
WEIGHT_DTYPES = ("default", "bf16", "fp16", "fp32", "fp8_e4m3fn")


class CommandLineError(Exception):
    """A bad flag: printed as one line, no traceback."""


def _size(value: str) -> int:
    number = _whole(value)
    if not 16 <= number <= MAX_SIZE or number % 16:
        near = min(MAX_SIZE, max(16, round(number / 16) * 16))
        raise argparse.ArgumentTypeError(f"got {value}; expected a multiple of 16 from 16 to {MAX_SIZE} (use {near})")
    return number


def _steps(value: str) -> int:
    number = _whole(value)
    if not 1 <= number <= MAX_STEPS:
        raise argparse.ArgumentTypeError(f"got {value}; expected 1 to {MAX_STEPS} (Z-Image-Turbo: 8)")
    return number


def _batch(value: str) -> int:
    number = _whole(value)
    if not 1 <= number <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"got {value}; expected 1 to {MAX_BATCH} pictures")
    return number


def _seed(value: str) -> int:
    number = _whole(value)
    if not 0 <= number < 2 ** 64:
        raise argparse.ArgumentTypeError(f"got {value}; expected a whole number from 0 to 2^64 - 1")
    return number


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got '{value}'; expected a whole number") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the flag, not argparse's usage block
        raise CommandLineError(message.replace("argument ", "", 1))


def parse_args(argv=None):
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", default="A red fox sitting in fresh snow at sunrise, soft golden light, photograph.",
                   help="what to draw (the toy model understands 'a <colour> <shape> on a <colour> background' only)")
    p.add_argument("--out", default=os.path.join(ROOT, "out", "z_image.png"), help="PNG file to write")
    p.add_argument("--width", type=_size, default=None, help=f"pixels, a multiple of 16 up to {MAX_SIZE} (default: 1024 with real weights, 64 for the toy model, 256 for --random-demo)")
    p.add_argument("--height", type=_size, default=None, help="as --width")
    p.add_argument("--seed", type=_seed, default=42)
    p.add_argument("--steps", type=_steps, default=8, help=f"1 to {MAX_STEPS} (Z-Image-Turbo: 8)")
    p.add_argument("--batch-size", type=_batch, default=1, help=f"1 to {MAX_BATCH}")
    p.add_argument("--transformer", help="z_image_turbo_bf16.safetensors (or a quantised repack, a .gguf), or a diffusers folder")
    p.add_argument("--text-encoder", help="qwen_3_4b.safetensors, or a diffusers folder")
    p.add_argument("--vae", help="ae.safetensors, or a diffusers folder")
    p.add_argument("--diffusers-folder", help="one Z-Image diffusers folder for all three (its tokenizer/ too)")
    p.add_argument("--tokenizer", default=None, help="folder with the Qwen tokenizer's vocab.json + merges.txt (default: the diffusers "
                   "folder's tokenizer/, else ZIMAGE_TOKENIZER_DIR, else ComfyUI's bundled one when the pack sits in ComfyUI/custom_nodes)")
    p.add_argument("--demo-dir", default=os.path.join(ROOT, "out", "demo_models"), help="where --random-demo writes its random models")
    p.add_argument("--random-demo", action="store_true", help="random demo weights instead of the toy model (the picture is noise)")
    p.add_argument("--weight-dtype", default="default", choices=WEIGHT_DTYPES)
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import zimage_pack  # noqa: F401  (installed by scripts/setup_env.sh)

    if args.diffusers_folder:
        _require_path("--diffusers-folder", args.diffusers_folder)
        args.transformer = args.text_encoder = args.vae = os.path.abspath(args.diffusers_folder)
    given = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in ("--transformer", "--text-encoder", "--vae")}
    for flag, path in given.items():
        if path:
            _require_path(flag, path)
    demo = not any(given.values())
    if not demo and not all(given.values()):
        missing = ", ".join(flag for flag, path in given.items() if not path)
        raise CommandLineError(f"{missing}: missing; give all three of --transformer, --text-encoder and --vae "
                               "(or --diffusers-folder), or none for the toy model")
    toy = demo and not args.random_demo
    if args.tokenizer:
        _require_path("--tokenizer", args.tokenizer)
    if toy:
        from zimage_pack.train.toy_models import toy_paths

        paths = toy_paths()
        print("no weights given: using the toy model (coloured shapes, 64x64) in", os.path.dirname(paths["transformer"]))
        _warn_if_the_toy_model_cannot_draw(args.prompt)
    elif demo:
        from zimage_pack.loaders.demo_models import write_demo_models

        paths = write_demo_models(args.demo_dir)
        print("no weights given: using random demo models made from a seed in", args.demo_dir)
    else:
        paths = {"transformer": args.transformer, "text_encoder": args.text_encoder, "vae": args.vae, "tokenizer": None}
    tokenizer = _tokenizer(args, paths["tokenizer"])
    width = args.width or (64 if toy else 256 if demo else 1024)
    height = args.height or (64 if toy else 256 if demo else 1024)
    # the toy model was trained and measured in float32; real weights use the loaders' choice
    compute = "fp32" if toy else "auto"

    from zimage_pack.loaders.text_encoder import encode_prompts, load_text_encoder
    from zimage_pack.loaders.transformer import load_transformer
    from zimage_pack.loaders.vae import load_vae

    model = load_transformer(paths["transformer"], args.weight_dtype, compute)
    encoder = load_text_encoder(paths["text_encoder"], tokenizer, compute_dtype=compute)
    features = encode_prompts(encoder, [args.prompt]) * args.batch_size
    del encoder
    vae = load_vae(paths["vae"], compute_dtype=compute)
    _check_fits(model, vae, width, height, args.batch_size)
    final = _draw(lambda latent: _turbo(model, features, latent, args), vae, width, height, args.batch_size, os.path.abspath(args.out))
    print(f"wrote {final} ({width}x{height}, {args.steps} steps, seed {args.seed})")
    if toy:  # the same prompt and seed in 2 steps with the per-step LoRAs distilled by zimage-distill (train/)
        stem, ext = os.path.splitext(final)
        second = _draw(lambda latent: _two_step(model, features, latent, args.seed), vae, width, height, args.batch_size, f"{stem}_2step{ext}")
        print(f"wrote {second} (2 steps, distilled per-step LoRAs)")
    return final


def _require_path(flag: str, path: str) -> None:
    if not os.path.exists(path):
        raise CommandLineError(f"{flag}: no file or folder '{path}'; give the path of an existing one")


def _tokenizer(args, own: str | None) -> str:
    """The tokenizer folder: --tokenizer, the diffusers folder's, ZIMAGE_TOKENIZER_DIR, the toy or demo
    model's own, or ComfyUI's bundled copy; refused with the list of places looked at."""
    from zimage_pack.loaders.text_encoder import find_tokenizer

    candidates = [("--tokenizer", args.tokenizer)]
    if args.diffusers_folder:
        candidates.append(("the diffusers folder's tokenizer/", os.path.join(args.diffusers_folder, "tokenizer")))
    candidates += [("ZIMAGE_TOKENIZER_DIR", os.environ.get("ZIMAGE_TOKENIZER_DIR")), ("the demo model's own", own),
                   ("ComfyUI's bundled one (the pack in ComfyUI/custom_nodes)",
                    os.path.join(os.path.dirname(os.path.dirname(ROOT)), "comfy", "text_encoders", "qwen25_tokenizer"))]
    return find_tokenizer(candidates, how_to_fix="pass --tokenizer DIR (a folder with vocab.json and merges.txt, such as a "
                                                 "diffusers folder's tokenizer/) or set ZIMAGE_TOKENIZER_DIR")


def _warn_if_the_toy_model_cannot_draw(prompt: str) -> None:
    from zimage_pack.train import toy_world

    unknown = toy_world.unknown_words(prompt)
    if unknown or toy_world.parse_prompt(prompt) is None:
        what = f"words it never saw ({', '.join(repr(w) for w in unknown)})" if unknown else "no shape and two colours"
        print(f"warning: the toy model cannot draw this prompt: {what}. It understands '{toy_world.FORM}' only "
              f"(colours: {', '.join(toy_world.COLOURS)}; shapes: {', '.join(toy_world.SHAPES)}). Drawing it anyway.")


def _check_fits(model, vae, width: int, height: int, batch: int) -> None:
    """Refuses a size the machine cannot hold before anything is allocated (the nodes' own check)."""
    from zimage_pack.loaders.residency import pick_device
    from zimage_pack.samplers.memory_budget import check_sampling_fits, check_vae_fits

    device = pick_device()
    check_sampling_fits(model, batch, height // 8, width // 8, False, device)
    check_vae_fits(vae, height, width, batch, 0, True, device)


def _turbo(model, features, latent, args):
    from zimage_pack.samplers.turbo import sample

    return sample(model, features, latent, args.seed, args.steps)


def _two_step(model, features, latent, seed: int):
    from zimage_pack.loaders.lora_merge import prepare_lora
    from zimage_pack.loaders.step_decoupled import StepSettings, from_models
    from zimage_pack.samplers.two_step import sample_two_step
    from zimage_pack.train.outputs import lora_paths
    from zimage_pack.train.toy_models import TOY_DIR

    per_step = [model.with_lora(prepare_lora(model.module, path, 1.0)[0]) for path in lora_paths(TOY_DIR).values()]
    final, _ = sample_two_step(from_models(*per_step), features, latent, seed, StepSettings(0.5, 3.0, "euler"))
    return final


def _draw(sampler, vae, width: int, height: int, batch: int, path: str) -> str:
    """Samples, decodes and writes ``path`` (the first picture of the batch there, the others numbered beside it)."""
    import numpy as np
    from PIL import Image

    from zimage_pack.loaders.vae import decode
    from zimage_pack.samplers.latents import empty_latent

    latent = sampler(empty_latent(width, height, batch))
    images = (decode(vae, latent).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    stem, ext = os.path.splitext(path)
    for i, image in enumerate(images):
        Image.fromarray(image).save(path if i == 0 else f"{stem}_{i}{ext}")
    return path


def cli(argv=None) -> int:
    """The command: bad input is one line on stderr and exit status 2, never a traceback."""
    from_pack = ()
    try:
        from zimage_pack.loaders.errors import ZImageInputError

        from_pack = (ZImageInputError,)
    except ImportError:
        pass
    try:
        main(argv)
        return 0
    except CommandLineError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    except from_pack as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
