"""GPU: zimage-distill's training step at real size — seconds per step and torch.cuda.max_memory_allocated
per frozen-base dtype, with gradient checkpointing, beside the traced figures of bench/distill_memory.py.

The teacher is the real Z-Image transformer when --teacher is given (any file the loader reads), else the
real architecture with random weights made on the card (the memory and time are the same); captions are
random features of --caption-tokens tokens (the text encoder is not part of a training step: the trainer
encodes each prompt once, into its cache). The Trainer is the one `zimage-distill` runs.

Goals (printed next to each figure): peak ≤ the traced peak × 1.1 (bf16 18.6 GiB, fp8 13.2 GiB at 1024²,
rank 32, batch 1), i.e. a 24 GB card for bf16 and a 16 GB card for fp8; under accelerate (one sample per
GPU, the gradients averaged over the GPUs) the same per GPU, and samples per second against one GPU.

    python bench/gpu_distill.py [--teacher z_image_turbo_bf16.safetensors] [--size 1024] [--steps 6]
    accelerate launch --multi_gpu --num_processes 8 bench/gpu_distill.py [--teacher …]   # data-parallel, per GPU
    python bench/gpu_distill.py --device cpu --tiny     # a smoke run of this script without a GPU
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def run(args, base: str, processes) -> tuple[float, list[float]]:
    """(seconds per step, each process's peak GiB) of the trainer's own step, one sample per process."""
    import os
    import shutil

    from zimage_pack.train.distill import DistillConfig, Trainer

    device = processes.device
    module = _teacher(args, base, device)
    cap_dim = module.config.cap_feat_dim
    generator = torch.Generator().manual_seed(0)
    captions = {}

    def encode(prompt: str) -> torch.Tensor:
        if prompt not in captions:
            captions[prompt] = torch.randn(args.caption_tokens, cap_dim, generator=generator).to(device, torch.bfloat16)
        return captions[prompt]

    out = os.path.join(args.out, base)  # one folder every process sees (the teacher cache is made in shares)
    if processes.main:
        shutil.rmtree(out, ignore_errors=True)
    processes.wait()
    config = DistillConfig(out=out, prompts=[f"prompt {i}" for i in range(max(2, processes.count))], width=args.size, height=args.size,
                           samples_per_prompt=1, steps=args.steps, batch=processes.count, rank=args.rank, gradient_checkpointing=True,
                           checkpoint_every=10**9)
    trainer = Trainer(config, module, encode, log=lambda *a: None, processes=processes)
    trainer.train(until=1, progress=False)  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    processes.wait()
    start = time.perf_counter()
    trainer.train(until=args.steps - 1, progress=False)  # the last step would save the checkpoint: not timed
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(1, args.steps - 2)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    peaks = processes.accelerator.gather(torch.tensor([peak], device=device)).tolist() if processes.count > 1 else [peak]
    del trainer, module
    return seconds, peaks


def main():
    import tempfile

    from zimage_pack.train.parallel import Processes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--caption-tokens", type=int, default=512)
    parser.add_argument("--bases", default="bf16,fp8")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (under accelerate: the GPU it gives each process)")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "zimage_gpu_distill"), help="a folder every process sees")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (a smoke run of the script, e.g. on the CPU)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this is the GPU script (use --device cpu --tiny for a smoke run)")
    processes = Processes.start()
    if args.tiny:
        args.size, args.caption_tokens = min(args.size, 64), min(args.caption_tokens, 16)
    say = print if processes.main else (lambda *a: None)
    device = processes.device
    say(f"zimage-distill step on {processes.count} × {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, {args.size}², "
        f"1 sample per process, rank {args.rank}, gradient checkpointing, "
        f"teacher: {args.teacher or ('random weights, real architecture' if not args.tiny else 'tiny random')}")
    for base in args.bases.split(","):
        seconds, peaks = run(args, base, processes)
        goal = TRACED_GIB[base] * 1.1
        worst = max(peaks)
        verdict = "" if args.tiny or device.type != "cuda" else f"  (goal ≤ {goal:.1f} GiB per GPU: {'met' if worst <= goal else 'NOT met'})"
        say(f"  {base:5s} {seconds:7.2f} s/step, {processes.count / seconds:6.2f} samples/s   peak per process "
            f"{', '.join(f'{p:.2f}' for p in peaks)} GiB (traced {TRACED_GIB[base]} GiB){verdict}")
    shutil.rmtree(args.out, ignore_errors=True) if processes.main else None
    processes.wait()


if __name__ == "__main__":
    main()
