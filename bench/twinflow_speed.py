"""End-to-end time of TwinFlow at 2 and 4 model calls over Turbo's 8 steps, on the same thin
real-width model (TwinFlow = Turbo + t_embedder_2), size and seed, decode included, interleaved runs
in one process; and the memory t_embedder_2 adds.

Goals (issue 9): 2 NFE / 8 steps ≤ 0.30, 4 NFE / 8 steps ≤ 0.55.

    python bench/twinflow_speed.py [--layers 12] [--size 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch

GOALS = {2: 0.30, 4: 0.55}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=12, help="main blocks (the real model has 30)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import zimage_pack  # noqa: F401
    from safetensors.torch import save_file

    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders.residency import module_bytes
    from zimage_pack.loaders.transformer import load_transformer
    from zimage_pack.loaders.vae import decode, load_vae
    from zimage_pack.samplers.latents import empty_latent
    from zimage_pack.samplers.turbo import sample
    from zimage_pack.samplers.twinflow import sample_twinflow

    work = tempfile.mkdtemp(prefix="zimage_twinflow_bench_")
    torch.set_default_dtype(torch.bfloat16)
    twin = dm.make_twinflow_transformer(0, **{**dm.REAL_TRANSFORMER, "n_layers": args.layers})
    torch.set_default_dtype(torch.float32)
    save_file(dm.diffusers_to_comfy_transformer_keys({k: v.contiguous() for k, v in twin.state_dict().items()}), os.path.join(work, "twinflow.safetensors"))
    del twin
    dm.write_vae(dm.make_vae(1, block_out_channels=[128, 256, 512, 512], layers_per_block=2), os.path.join(work, "ae.safetensors"))
    model = load_transformer(os.path.join(work, "twinflow.safetensors"))
    vae = load_vae(os.path.join(work, "ae.safetensors"), "bf16")
    features = [torch.randn(40, 2560, generator=torch.Generator().manual_seed(0))]
    latent = empty_latent(args.size, args.size)
    extra = module_bytes(model.module.t_embedder_2)
    print(f"TwinFlow transformer: dim 3840, {args.layers} main + 2 + 2 refiner blocks, bf16; FLUX VAE bf16; {args.size}², {torch.get_num_threads()} threads")
    print(f"t_embedder_2: {extra / 2**20:.2f} MiB = {100 * extra / module_bytes(model.module):.3f} % of this model; "
          f"{100 * extra / (11.46 * 2**30):.4f} % of the real 11.46 GiB transformer")

    runs = {
        "Turbo 8 steps": lambda: decode(vae, sample(model, features, latent, seed=7, steps=8)),
        "TwinFlow 2 NFE": lambda: decode(vae, sample_twinflow(model, features, latent, 7, nfe=2)[0]),
        "TwinFlow 4 NFE": lambda: decode(vae, sample_twinflow(model, features, latent, 7, nfe=4)[0]),
    }
    runs["TwinFlow 2 NFE"]()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for label, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    for label, value in med.items():
        print(f"{label}: {value:.2f} s end to end (median of {args.repeats})")
    for nfe, goal in GOALS.items():
        ratio = med[f"TwinFlow {nfe} NFE"] / med["Turbo 8 steps"]
        print(f"GOAL TwinFlow {nfe} NFE / Turbo 8 steps <= {goal}: {ratio:.3f} -> {'MET' if ratio <= goal else 'NOT MET'}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
