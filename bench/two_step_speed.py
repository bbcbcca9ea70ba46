"""End-to-end time of the 2-step path over the 8-step path on the same model, size and seed,
decode included, in one process.

Goal (issue 4): 2-step / 8-step ≤ 0.30.

Model: thin real-width Z-Image (dim 3840, real block shapes, few blocks) and the real FLUX VAE
architecture (random weights). The ratio is conservative: the real transformer has 34 blocks, so
the fixed costs (decode) weigh less there than here.

    python bench/two_step_speed.py [--layers 12] [--size 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

GOAL = 0.30


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=12, help="main blocks (the real model has 30)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vae-dtype", default="bf16", choices=["bf16", "fp32"], help="bf16 is what ComfyUI uses for this VAE on GPUs")
    args = parser.parse_args()

    import zimage_pack  # noqa: F401
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders.step_decoupled import StepSettings, from_models
    from zimage_pack.loaders.transformer import load_transformer
    from zimage_pack.loaders.vae import decode, load_vae
    from zimage_pack.samplers.latents import empty_latent
    from zimage_pack.samplers.turbo import sample
    from zimage_pack.samplers.two_step import sample_two_step

    work = tempfile.mkdtemp(prefix="zimage_2step_bench_")
    torch.set_default_dtype(torch.bfloat16)
    dm.write_transformer(dm.make_transformer(0, **{**dm.REAL_TRANSFORMER, "n_layers": args.layers}), os.path.join(work, "t.safetensors"))
    torch.set_default_dtype(torch.float32)
    dm.write_vae(dm.make_vae(1, block_out_channels=[128, 256, 512, 512], layers_per_block=2), os.path.join(work, "ae.safetensors"))
    model = load_transformer(os.path.join(work, "t.safetensors"))
    vae = load_vae(os.path.join(work, "ae.safetensors"), args.vae_dtype)
    step_model = from_models(model, model)
    features = [torch.randn(40, 2560, generator=torch.Generator().manual_seed(0))]
    latent = empty_latent(args.size, args.size)
    print(f"transformer: dim 3840, {args.layers} main + 2 + 2 refiner blocks, bf16; VAE: FLUX.1 architecture, {args.vae_dtype}; "
          f"{args.size}x{args.size}, seed 7, {torch.get_num_threads()} threads")

    parts = {}

    def timed(label, fn):
        start = time.perf_counter()
        out = fn()
        parts.setdefault(label, []).append(time.perf_counter() - start)
        return out

    def eight():
        latents = timed("8-step sampling", lambda: sample(model, features, latent, seed=7, steps=8))
        return timed("8-step decode", lambda: decode(vae, latents))

    def two():
        latents = timed("2-step sampling", lambda: sample_two_step(step_model, features, latent, 7, StepSettings())[0])
        return timed("2-step decode", lambda: decode(vae, latents))

    two()  # warm-up (first-touch of the weights, allocator)
    parts.clear()
    times = {"8-step": [], "2-step": []}
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        for label, fn in (("8-step", eight), ("2-step", two)):
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    for label, value in med.items():
        print(f"{label}: {value:.2f} s end to end (median of {args.repeats}) = sampling {statistics.median(parts[label + ' sampling']):.2f} s "
              f"+ decode {statistics.median(parts[label + ' decode']):.2f} s")
    ratio = med["2-step"] / med["8-step"]
    print(f"\nGOAL 2-step / 8-step <= {GOAL}: {ratio:.3f}  -> {'MET' if ratio <= GOAL else 'NOT MET'}")
    forward = statistics.median(parts["8-step sampling"]) / 8
    dec = statistics.median(parts["8-step decode"] + parts["2-step decode"])
    blocks = args.layers + 4
    real = forward * 34 / blocks
    print(f"sampling alone: {statistics.median(parts['2-step sampling']) / statistics.median(parts['8-step sampling']):.3f}; "
          f"projected to the real 34-block transformer (forward x 34/{blocks}, same decode): {(2 * real + dec) / (8 * real + dec):.3f}")
    import shutil

    shutil.rmtree(work)


if __name__ == "__main__":
    main()
