"""CPU time of one transformer step per stored format, relative to bf16, on a thin real-width
Z-Image (dim 3840, 2 main + 1 + 1 refiner blocks) at 256², runs interleaved in one process; and
bf16 against diffusers' own module on the same weights (goal ≤ 1.05: the pack adds nothing to
a bf16 step). On the CPU every quantised layer is dequantised per call (comfy-kitchen / diffusers'
GGUF code); on CUDA the fast kernels replace that (bench/gpu_quantized.py).

    python bench/quantized_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

THIN = dict(dim=3840, n_layers=2, n_refiner_layers=1, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, axes_dims=[32, 48, 48])
CASES = [("bf16", None), ("float8_e4m3fn", "float8_e4m3fn"), ("int8 + ConvRot", "int8_convrot"), ("nvfp4", "nvfp4"),
         ("mxfp8", "mxfp8"), ("GGUF Q8_0", "Q8_0"), ("GGUF Q4_0", "Q4_0")]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    import zimage_pack  # noqa: F401
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders import demo_quantized as dq
    from zimage_pack.loaders.transformer import load_transformer
    from zimage_pack.samplers.turbo import predict_velocity

    torch.set_num_threads(os.cpu_count() or 1)
    model = dm.make_transformer(seed=0, **THIN)
    root = tempfile.mkdtemp()
    loaded = {}
    for label, kind in CASES:
        path = os.path.join(root, label.replace(" ", "_"))
        if kind is None:
            loaded[label] = load_transformer(dm.write_transformer(model, path + ".safetensors", "comfy", dtype=torch.bfloat16))
        elif kind.startswith("Q"):
            loaded[label] = load_transformer(dq.write_gguf_transformer(model, path + ".gguf", kind))
        else:
            fmt, group = ("int8_tensorwise", 256) if kind == "int8_convrot" else (kind, 0)
            loaded[label] = load_transformer(dq.write_quantized_transformer(model, path + ".safetensors", fmt, convrot_groupsize=group))
    reference = loaded["bf16"].module  # diffusers' module itself, called directly
    latent = args.size // 8
    x = torch.randn(1, 16, latent, latent)
    feats = [torch.randn(64, 2560)]
    t = torch.tensor([0.3])

    def diffusers_step():
        with torch.no_grad():
            reference([x[0].to(torch.bfloat16).unsqueeze(1)], t, [feats[0].to(torch.bfloat16)], return_dict=False)

    times = {label: [] for label, _ in CASES}
    times["diffusers bf16"] = []
    for _ in range(args.repeats):
        for label, _ in CASES:
            start = time.perf_counter()
            predict_velocity(loaded[label], x, 0.7, feats, None)
            times[label].append(time.perf_counter() - start)
        start = time.perf_counter()
        diffusers_step()
        times["diffusers bf16"].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    print(f"thin real-width Z-Image, {args.size}², one step, best of {args.repeats} interleaved runs (CPU)")
    print(f"pack bf16 / diffusers bf16 = {best['bf16'] / best['diffusers bf16']:.3f}   goal ≤ 1.05: {'met' if best['bf16'] / best['diffusers bf16'] <= 1.05 else 'NOT met'}")
    for label, _ in CASES[1:]:
        print(f"{label:16s} / bf16 = {best[label] / best['bf16']:.2f}")


if __name__ == "__main__":
    main()
