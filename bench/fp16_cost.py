"""Cost of fp16 overflow protection: one transformer step of a thin real-width Z-Image (dim 3840,
2 main + 1 + 1 refiner blocks) in fp16 with the clamps, over fp16 without them and over bf16,
interleaved runs in one process (issue 13 asks for the figures; the clamps are elementwise and in place).

    python bench/fp16_cost.py [--device cpu|cuda] [--size 512] [--repeats 5]

On CUDA run it on the card in question (a T4 has no fast bf16: its bf16 row is informative only).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

THIN = dict(dim=3840, n_layers=2, n_refiner_layers=1, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, axes_dims=[32, 48, 48])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import zimage_pack  # noqa: F401
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders.compute_dtype import protect_fp16, unprotect_fp16
    from zimage_pack.loaders.transformer import ZImageTransformer
    from zimage_pack.samplers.turbo import predict_velocity

    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(args.device)
    base = dm.make_transformer(seed=0, **THIN)
    models = {}
    for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        module = dm.make_transformer(seed=0, **THIN) if label == "fp16" else base
        module.load_state_dict(base.state_dict())
        models[label] = ZImageTransformer(module.to(device, dtype), dtype, dtype, label)
    latent = args.size // 8
    x = torch.randn(1, 16, latent, latent, device=device)
    feats = [torch.randn(128, 2560)]
    fp16 = models["fp16"]

    def step(model):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        predict_velocity(model, x, 0.5, feats, None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = {"bf16": [], "fp16": [], "fp16 protected": []}
    for _ in range(args.repeats + 1):  # the first round warms up
        times["bf16"].append(step(models["bf16"]))
        unprotect_fp16(fp16.module)
        times["fp16"].append(step(fp16))
        protect_fp16(fp16.module)
        times["fp16 protected"].append(step(fp16))
    best = {k: min(v[1:]) for k, v in times.items()}
    print(f"thin real-width Z-Image, {args.size}², one step on {device}, best of {args.repeats} interleaved runs")
    ratio = best["fp16 protected"] / best["fp16"]
    print(f"fp16 protected / fp16 plain = {ratio:.3f}")
    print(f"fp16 protected / bf16       = {best['fp16 protected'] / best['bf16']:.3f}")


if __name__ == "__main__":
    main()
