"""GPU: seconds per image and torch.cuda.max_memory_allocated per stored format and memory mode,
beside diffusers' ZImagePipeline (bf16, enable_model_cpu_offload) on the same weights, in one run.

No weights can be downloaded, so a random Z-Image transformer of the real width is generated
(``--layers 30`` is the real 6.15 B model; fewer layers for a quick look) and written in each format
with the pack's own writers (Comfy-Org layouts through comfy-kitchen, GGUF through the gguf
package). Text features are random [512, 2560] tensors, so only the transformer and the sampler are
timed (decode excluded, the same for both sides).

    python bench/gpu_quantized.py [--layers 30] [--size 1024] [--steps 8] [--formats bf16,fp8,int8_convrot,nvfp4,mxfp8,Q8_0,Q4_0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

GIB = 2**30


def _write(model, fmt: str, root: str) -> str:
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders import demo_quantized as dq

    path = os.path.join(root, f"z_image_{fmt}")
    if fmt == "bf16":
        return dm.write_transformer(model, path + ".safetensors", "comfy", dtype=torch.bfloat16)
    if fmt.startswith("Q"):
        return dq.write_gguf_transformer(model, path + ".gguf", fmt)
    comfy = {"fp8": ("float8_e4m3fn", 0), "int8_convrot": ("int8_tensorwise", 256), "nvfp4": ("nvfp4", 0), "mxfp8": ("mxfp8", 0)}[fmt]
    return dq.write_quantized_transformer(model, path + ".safetensors", comfy[0], convrot_groupsize=comfy[1])


def _ours(path: str, mode: str, features, size: int, steps: int, fast: bool) -> tuple[float, float]:
    from zimage_pack.loaders import residency
    from zimage_pack.loaders.speed import use_fast_matmul
    from zimage_pack.loaders.transformer import load_transformer
    from zimage_pack.samplers.latents import empty_latent
    from zimage_pack.samplers.turbo import sample

    loaded = load_transformer(path)
    use_fast_matmul(loaded.module, fast)
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    latent = empty_latent(size, size)
    residency.place_transformer(loaded.module, device, mode, residency.transformer_activation_bytes(loaded.module, 1, size // 8, size // 8))
    sample(loaded, features, latent, seed=1, steps=1)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    start = time.perf_counter()
    sample(loaded, features, latent, seed=1, steps=steps)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated()
    residency.remove_offloading(loaded.module)
    residency.offload(loaded.module)
    del loaded
    return seconds, peak


def _diffusers_pipeline(path: str, features, size: int, steps: int) -> tuple[float, float]:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline

    from zimage_pack.loaders.transformer import load_transformer

    transformer = load_transformer(path).module
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16, use_quant_conv=False,
                        use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159).to(torch.bfloat16)
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    pipe.enable_model_cpu_offload()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    embeds = [f.to(torch.bfloat16) for f in features]
    pipe(prompt_embeds=embeds, height=size, width=size, num_inference_steps=1, guidance_scale=0.0, output_type="latent")
    torch.cuda.synchronize()
    start = time.perf_counter()
    pipe(prompt_embeds=embeds, height=size, width=size, num_inference_steps=steps, guidance_scale=0.0, output_type="latent")
    torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--formats", default="bf16,fp8,int8_convrot,nvfp4,mxfp8,Q8_0,Q4_0")
    parser.add_argument("--root", default=None, help="where to write the model files (default: a temporary folder)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    import zimage_pack  # noqa: F401
    from zimage_pack.loaders import demo_models as dm

    model = dm.make_transformer(seed=0, dim=3840, n_layers=args.layers, n_refiner_layers=2, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, axes_dims=[32, 48, 48])
    model.to(torch.bfloat16)
    root = args.root or tempfile.mkdtemp()
    features = [torch.randn(512, 2560)]
    print(f"{torch.cuda.get_device_name()}: Z-Image dim 3840, {args.layers} layers, {args.size}², {args.steps} steps, batch 1")
    print(f"{'format':14s} {'mode':14s} {'fast':5s} {'s/image':>8s} {'max alloc':>10s}")
    paths = {}
    for fmt in args.formats.split(","):
        paths[fmt] = _write(model, fmt, root)
        modes = ["full", "block_offload", "leaf_offload"] if fmt == "bf16" else ["full", "block_offload"]
        for mode in modes:
            for fast in ([False, True] if fmt not in ("bf16",) and not fmt.startswith("Q") else [False]):
                seconds, peak = _ours(paths[fmt], mode, features, args.size, args.steps, fast)
                print(f"{fmt:14s} {mode:14s} {str(fast):5s} {seconds:8.2f} {peak / GIB:9.2f}G")
        if fmt != "bf16":
            os.remove(paths[fmt])
    seconds, peak = _diffusers_pipeline(paths["bf16"], features, args.size, args.steps)
    print(f"{'diffusers bf16':14s} {'cpu_offload':14s} {'-':5s} {seconds:8.2f} {peak / GIB:9.2f}G   (ZImagePipeline, enable_model_cpu_offload)")


if __name__ == "__main__":
    main()
