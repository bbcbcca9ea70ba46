"""The 2-step step-decoupled sampler on native MODELs (nodes/native_two_step.py), in one ComfyUI process
(run it with ComfyUI's Python, e.g. .venv-comfyui/bin/python; the ComfyUI is found as the tests find it).
Each figure is printed with its goal (issue 20, "Measured"):

  1. the swap between two LoRA chains on one UNETLoader MODEL (clones of one base): what ComfyUI's
     load of the step-2 clone changes (weights, bytes) and its seconds. On the CPU (--cpu) the weights
     ComfyUI rewrites (their storage changes). On CUDA: the bytes copied host↔device (torch.profiler's
     memcpy events) and the seconds of [load step-2 clone + one step-2 forward] minus [the same forward
     with step 2 already loaded] — with dynamic VRAM (ComfyUI's default on NVIDIA) the copies happen in
     that forward, not in the load. Goal: only the differing weights move;
  2. seconds per image, decode included, thin real-width model at --size: the 2-step sampler (swap
     included: each run starts from the other clone loaded) over native KSampler (8 steps, res_multistep,
     simple, cfg 1, as the native template) on the base MODEL — goal ≤ 0.30; and on CUDA the device peak
     of a 2-step run (torch.cuda.max_memory_allocated);
  3. the traced device peak at 1024² of the real-size model (dim 3840, 30 layers) as ComfyUI holds a
     LoRA chain on GPU (one base with its patched weights in place; the LoRA tensors and one fp32 weight
     in flight while a key is patched): ComfyUI's own NextDiT forward under FakeTensorMode + MemTracker
     (nothing allocated) — goal ≤ 13 GiB in bf16.

    python bench/comfyui/two_step_native.py [--size 256] [--layers 2] [--repeats 3] [--rank 64] [--gpu] [--no-trace]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
GIB, MIB = 2**30, 2**20


def _swap_cpu(base, step1, step2):
    """Weights whose storage ComfyUI's load of ``step2`` (with ``step1`` loaded) replaces, their bytes, the seconds."""
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.load_models_gpu([step1])
    before = {k: v.data_ptr() for k, v in base.model.state_dict().items()}
    start = time.perf_counter()
    mm.load_models_gpu([step2])
    seconds = time.perf_counter() - start
    state = base.model.state_dict()
    changed = [k for k, v in state.items() if v.data_ptr() != before[k]]
    return len(changed), len(state), sum(state[k].numel() * state[k].element_size() for k in changed), seconds


def _memcpy_bytes(function):
    """(host→device, device→host) bytes copied while ``function`` runs (torch.profiler's CUDA memcpy events)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        function()
        torch.cuda.synchronize()
    path = tempfile.mktemp(suffix=".json")
    prof.export_chrome_trace(path)
    with open(path, encoding="utf-8") as handle:
        events = json.load(handle).get("traceEvents", [])
    os.remove(path)
    copies = [e for e in events if e.get("cat") == "gpu_memcpy"]
    h2d = sum(e.get("args", {}).get("bytes", 0) for e in copies if "HtoD" in e.get("name", ""))
    d2h = sum(e.get("args", {}).get("bytes", 0) for e in copies if "DtoH" in e.get("name", ""))
    return h2d, d2h


def _swap_cuda(step1, step2, one_step):
    import torch

    one_step(step1)
    torch.cuda.synchronize()
    start = time.perf_counter()
    swapped = _memcpy_bytes(lambda: one_step(step2))
    with_swap = time.perf_counter() - start
    start = time.perf_counter()
    same = _memcpy_bytes(lambda: one_step(step2))
    without = time.perf_counter() - start
    return swapped, same, with_swap - without


def _trace_1024(unet_config, size=1024, caption_tokens=512):
    """Device peak of ComfyUI's NextDiT (real size) at ``size``² with a LoRA chain patched in, traced."""
    import comfy.ldm.lumina.model
    import comfy.ldm.modules.attention
    import comfy.ops
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    config = {k: v for k, v in unet_config.items() if k not in ("dtype", "device", "operations", "allow_fp16")}
    config.update(n_layers=30, cap_feat_dim=2560)
    start = time.perf_counter()
    with FakeTensorMode():
        torch.set_default_dtype(torch.bfloat16)
        net = comfy.ldm.lumina.model.NextDiT(**config, dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init)
        torch.set_default_dtype(torch.float32)
        params = list(net.parameters())
        weights = sum(p.numel() * p.element_size() for p in params)
        largest = max(p.numel() for p in params)
        x = torch.randn(1, 16, size // 8, size // 8, dtype=torch.bfloat16)
        context = torch.randn(1, caption_tokens, 2560, dtype=torch.bfloat16)
        tracker = MemTracker()
        tracker.track_external(net)
        # the attention ComfyUI runs on NVIDIA (torch's SDPA), whichever this process chose
        options = {"optimized_attention_override": lambda function, *a, **k: comfy.ldm.modules.attention.attention_pytorch(*a, **k)}
        with tracker, torch.no_grad():
            net(x, torch.tensor([0.5], dtype=torch.bfloat16), context, caption_tokens, transformer_options=options)
        peak = tracker.get_tracker_snapshot("peak")
    device_peak = next(iter(peak.values()))
    total = next(v for k, v in device_peak.items() if "Total" in str(k))
    # while ComfyUI patches one key on the device (model_patcher.patch_weight_to_device): the weight's fp32
    # copy, the fp32 LoRA product added to it and the bf16 result (the key's LoRA tensors are a few MiB)
    patching = (4 + 4 + 2) * largest
    return weights, total - weights, patching, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--gpu", action="store_true", help="leave ComfyUI's device choice on (default: --cpu)")
    parser.add_argument("--no-trace", action="store_true", help="skip the 1024² trace")
    parser.add_argument("--trace-only", action="store_true", help="only the 1024² trace (no thin model, no sampling)")
    args = parser.parse_args()
    from native_speed import _setup_comfyui

    _setup_comfyui(args.gpu)

    import comfy.model_management as mm
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    import torch

    from zimage_pack.loaders import demo_loras
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders.step_decoupled import StepSettings
    from zimage_pack.nodes.native_two_step import sample_two_step_native, swap_keys

    if args.trace_only:
        _print_trace(_real_unet_config())
        return
    device = mm.get_torch_device()
    work = tempfile.mkdtemp(prefix="zimage_two_step_native_")
    atexit.register(shutil.rmtree, work, True)  # nothing left in the temporary folder
    thin = dict(dim=3840, n_layers=args.layers, n_refiner_layers=2, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, axes_dims=[32, 48, 48])
    module = dm.make_transformer(seed=0, **thin).to(torch.bfloat16)
    path = dm.write_transformer(module, os.path.join(work, "z_image_thin_bf16.safetensors"), "comfy")
    loras = [os.path.join(work, f"step{i}.safetensors") for i in (1, 2)]
    demo_loras.write_lora(module, loras[0], "ai-toolkit", rank=args.rank, seed=1)
    demo_loras.write_lora(module, loras[1], "ai-toolkit", rank=args.rank, seed=2, blocks=("layers", "noise_refiner"))
    del module
    vae_module = dm.make_vae(seed=0, block_out_channels=[128, 256, 512, 512], layers_per_block=2)  # the FLUX VAE's size
    vae_path = dm.write_vae(vae_module, os.path.join(work, "ae.safetensors"))
    del vae_module
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
    base = comfy.sd.load_diffusion_model(path)
    step1, step2 = (comfy.sd.load_lora_for_models(base, None, comfy.utils.load_torch_file(p), 1.0, 0)[0] for p in loras)
    positive = [[torch.randn(1, 64, 2560, generator=torch.Generator().manual_seed(2)), {}]]
    latent = torch.zeros(1, 16, args.size // 8, args.size // 8)
    settings = StepSettings(0.5, 3.0, "euler")
    mode = ("dynamic VRAM" if base.is_dynamic() else "ModelPatcher") + f" on {device}"
    print(f"thin real-width Z-Image ({args.layers} main layers, bf16 file, ComfyUI computes in {base.model.get_dtype_inference()}), "
          f"two LoRA chains (rank {args.rank}) on one UNETLoader MODEL, {mode}")

    # 1. the swap
    keys = swap_keys(step1, step2)
    size = sum(v.numel() * v.element_size() for v in base.model.state_dict().values())
    print(f"\n1. swap step-1 clone → step-2 clone (goal: only the differing weights move; they are {len(keys['keys'])} weights, "
          f"{keys['bytes'] / MIB:.0f} MiB of the base's {size / MIB:.0f} MiB)")
    if device.type == "cpu":
        changed, total, moved, seconds = _swap_cpu(base, step1, step2)
        print(f"   CPU: ComfyUI rewrote {changed} of {total} weights ({moved / MIB:.0f} MiB: step 1's unpatched, step 2's patched) "
              f"in {seconds:.2f} s — {'only the differing weights' if changed == len(keys['keys']) else 'MORE than the differing weights'}")
    else:
        sigmas = torch.tensor([0.75, 0.0])

        def one_step(model):
            comfy.sample.sample_custom(model, torch.randn(latent.shape), 1.0, comfy.samplers.sampler_object("euler"), sigmas, positive, [],
                                       latent.clone(), disable_pbar=True, seed=0)

        (h2d, d2h), (h2d0, d2h0), seconds = _swap_cuda(step1, step2, one_step)
        moved = h2d - h2d0 + d2h - d2h0
        print(f"   CUDA: the swap copied {(h2d - h2d0) / MIB:.0f} MiB host→device and {(d2h - d2h0) / MIB:.0f} MiB device→host "
              f"(a step-2 forward without the swap: {h2d0 / MIB:.0f} / {d2h0 / MIB:.0f} MiB) in {seconds:.3f} s — "
              f"{'only the differing weights' if moved <= 1.1 * keys['bytes'] else 'MORE than the differing weights'}")

    # 2. seconds per image, decode included
    noise_seed = 7

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def with_decode(sample):
        """(seconds sampling, seconds decoding) of one image."""
        synchronize()
        start = time.perf_counter()
        samples = sample()
        synchronize()
        middle = time.perf_counter()
        vae.decode(samples)
        synchronize()
        return middle - start, time.perf_counter() - middle

    def native_8():
        return with_decode(lambda: comfy.sample.sample(base, comfy.sample.prepare_noise(latent, noise_seed), 8, 1.0, "res_multistep", "simple",
                                                       positive, [], latent.clone(), disable_pbar=True, seed=noise_seed))

    def ours_2():
        return with_decode(lambda: sample_two_step_native(step1, step2, positive, {"samples": latent.clone()}, noise_seed, settings,
                                                          disable_pbar=True)[0]["samples"])

    native_8(), ours_2()  # warm up (first loads, kernels)
    pairs = []
    for i in range(args.repeats):
        pairs.append((native_8(), ours_2()) if i % 2 == 0 else tuple(reversed((ours_2(), native_8()))))
    ratio = statistics.median(sum(b) / sum(a) for a, b in pairs)
    median = statistics.median
    print(f"\n2. {args.size}², decode included, median of {args.repeats} alternating pairs: native 8-step KSampler "
          f"{median(sum(a) for a, _ in pairs):.2f} s (sampling {median(a[0] for a, _ in pairs):.2f} + decode {median(a[1] for a, _ in pairs):.2f}), "
          f"2-step sampler (swaps included) {median(sum(b) for _, b in pairs):.2f} s (sampling {median(b[0] for _, b in pairs):.2f} + decode "
          f"{median(b[1] for _, b in pairs):.2f}); ratio {ratio:.3f} (goal ≤ 0.30); sampling alone "
          f"{median(b[0] / a[0] for a, b in pairs):.3f}")
    if device.type == "cuda":
        mm.unload_all_models()
        torch.cuda.reset_peak_memory_stats()
        ours_2()
        print(f"   device peak of one 2-step run (torch.cuda.max_memory_allocated): {torch.cuda.max_memory_allocated() / GIB:.2f} GiB")

    # 3. traced device peak at 1024², real size
    if not args.no_trace:
        _print_trace(base.model.model_config.unet_config)


def _real_unet_config() -> dict:
    """ComfyUI's own detection of the real-size Z-Image from its key names and shapes (meta tensors)."""
    import comfy.model_detection
    import torch
    from diffusers import ZImageTransformer2DModel

    from zimage_pack.loaders import demo_models as dm

    with torch.device("meta"):
        module = ZImageTransformer2DModel(**dm.REAL_TRANSFORMER)
    state = dm.diffusers_to_comfy_transformer_keys(dict(module.state_dict()))
    return comfy.model_detection.detect_unet_config(state, "")


def _print_trace(unet_config) -> None:
    weights, activations, patching, seconds = _trace_1024(unet_config)
    total = weights + max(activations, patching)
    print(f"\n3. real size (30 layers), 1024², 512 caption tokens, traced in {seconds:.0f} s (FakeTensorMode + MemTracker, ComfyUI's "
          f"NextDiT): weights {weights / GIB:.2f} GiB + max(forward activations {activations / GIB:.2f} GiB, LoRA patching in flight "
          f"{patching / GIB:.2f} GiB) = {total / GIB:.2f} GiB (goal ≤ 13 GiB in bf16). The step-2 clone adds no second base: "
          f"ComfyUI patches the same weights in place; the originals of patched weights wait on the offload device.")


if __name__ == "__main__":
    main()
