"""GPU: zimage-distill's training step at real size — seconds per step and torch.cuda.max_memory_allocated
per frozen-base dtype, with gradient checkpointing, beside the traced figures of bench/distill_memory.py.

The teacher is the real Z-Image transformer when --teacher is given (any file the loader reads), else the
real architecture with random weights made on the card (the memory and time are the same); captions are
random features of --caption-tokens tokens (the text encoder is not part of a training step: the trainer
encodes each prompt once, into its cache). The Trainer is the one `zimage-distill` runs.

Goals (printed next to each figure): peak ≤ the traced peak × 1.1 (bf16 18.6 GiB, fp8 13.2 GiB at 1024²,
rank 32, batch 1), i.e. a 24 GB card for bf16 and a 16 GB card for fp8.

    python bench/gpu_distill.py [--teacher z_image_turbo_bf16.safetensors] [--size 1024] [--steps 6]
    python bench/gpu_distill.py --device cpu --tiny     # a smoke run of this script without a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

TRACED_GIB = {"bf16": 18.6, "fp8": 13.2}  # bench/distill_memory.py, 1024², batch 1, rank 32, checkpointing on


def _teacher(args, base: str, device: torch.device):
    if args.teacher:
        from zimage_pack.loaders.transformer import load_transformer

        weight = "fp8_e4m3fn" if base == "fp8" else "bf16"
        module = load_transformer(args.teacher, weight_dtype=weight, compute_dtype="bf16", device=device).module
        return module.to(device)
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(0)
    shape = dict(dim=128, n_layers=4, n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=64, axes_dims=[8, 12, 12]) if args.tiny else {}
    torch.set_default_dtype(torch.bfloat16)  # made in bf16 on the card: an fp32 copy would not fit a 24 GB one
    try:
        with torch.device(device):
            module = ZImageTransformer2DModel(**shape)
    finally:
        torch.set_default_dtype(torch.float32)
    if base == "fp8":  # what --weight-dtype fp8_e4m3fn does: fp8 at rest, each layer in bf16 while it runs
        module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    return module


def run(args, base: str, device: torch.device) -> tuple[float, float]:
    from zimage_pack.train.distill import DistillConfig, Trainer

    module = _teacher(args, base, device)
    cap_dim = module.config.cap_feat_dim
    generator = torch.Generator().manual_seed(0)
    captions = {}

    def encode(prompt: str) -> torch.Tensor:
        if prompt not in captions:
            captions[prompt] = torch.randn(args.caption_tokens, cap_dim, generator=generator).to(device, torch.bfloat16)
        return captions[prompt]

    config = DistillConfig(out=tempfile.mkdtemp(), prompts=["a", "b"], width=args.size, height=args.size, samples_per_prompt=1, steps=args.steps,
                           batch=1, rank=args.rank, gradient_checkpointing=True, checkpoint_every=10**9)
    trainer = Trainer(config, module, encode, log=lambda *a: None)
    trainer.train(until=1, progress=False)  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train(progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(1, args.steps - 1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--caption-tokens", type=int, default=512)
    parser.add_argument("--bases", default="bf16,fp8")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (a smoke run of the script, e.g. on the CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this is the GPU script (use --device cpu --tiny for a smoke run)")
    if args.tiny:
        args.size, args.caption_tokens = min(args.size, 64), min(args.caption_tokens, 16)
    print(f"zimage-distill step on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, {args.size}², batch 1, rank {args.rank}, "
          f"gradient checkpointing, teacher: {args.teacher or 'random weights, real architecture' if not args.tiny else 'tiny random'}")
    for base in args.bases.split(","):
        seconds, peak = run(args, base, device)
        goal = TRACED_GIB[base] * 1.1
        verdict = "" if args.tiny or device.type != "cuda" else f"  (goal ≤ {goal:.1f} GiB: {'met' if peak <= goal else 'NOT met'})"
        print(f"  {base:5s} {seconds:7.2f} s/step   peak {peak:6.2f} GiB (traced {TRACED_GIB[base]} GiB){verdict}")


if __name__ == "__main__":
    main()
