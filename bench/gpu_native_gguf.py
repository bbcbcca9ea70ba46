"""GPU: a GGUF Z-Image held quantised as ComfyUI's own MODEL (nodes/native_gguf.py) against UNETLoader's bf16 MODEL of
the same weights, in one default ComfyUI process with dynamic VRAM on (ComfyUI's main.py is imported as the server
imports it: comfy-aimdo initialised before torch, ModelPatcherDynamic as the core patcher), side by side:

  - device memory peak while sampling (goal: the GGUF MODEL's below the bf16 MODEL's), measured at the device
    (``torch.cuda.mem_get_info`` polled every 2 ms, above the level before the model was loaded: dynamic VRAM's
    weights live in comfy-aimdo's allocations, which torch's allocator statistics do not see) and, for reference,
    torch's ``max_memory_allocated``;
  - seconds per image (for the record: each GGUF layer is dequantised at every call);
  - correctness on the dynamic path, which the CPU tests cannot reach: the GGUF MODEL's sample within Q8_0's error of
    the bf16 MODEL's, and a LoRA (native ``load_lora_for_models``) changing the GGUF MODEL's sample as it changes the
    bf16 MODEL's (the two effects within 10 % of each other; a LoRA skipped on the GGUF side would give 100 %).

A thin real-width transformer (dim 3840, --layers main layers, the two refiners of each kind), random bf16 weights,
written as a bf16 single file and as a Q8_0 GGUF in ComfyUI-GGUF's layout; random [1, 64, 2560] text features.

    python bench/gpu_native_gguf.py [--layers 6] [--size 1024] [--steps 8] [--repeats 2]
    python bench/gpu_native_gguf.py --cpu --layers 1 --size 64 --steps 2   # a smoke run of the script without a GPU
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
GIB = 2**30
Q8_0_BOUND = 2 * 4.5 / 254  # tests/in_comfyui/test_native_gguf.py: twice Q8_0's worst relative weight error


def _start_comfyui(cpu: bool) -> None:
    """ComfyUI as its server starts it (main.py's module code: arguments, comfy-aimdo, dynamic VRAM), without serving."""
    from comfyui_harness import find_comfyui

    comfyui = find_comfyui()
    if comfyui is None:
        sys.exit("no ComfyUI found: set COMFYUI_DIR")
    if "torch" in sys.modules:
        sys.exit("torch was imported before ComfyUI's main: dynamic VRAM needs comfy-aimdo first")
    sys.path.insert(0, str(comfyui))
    argv, sys.argv = sys.argv, [os.path.join(str(comfyui), "main.py")] + (["--cpu"] if cpu else [])
    cwd = os.getcwd()
    os.chdir(str(comfyui))
    try:
        import main  # noqa: F401
    finally:
        os.chdir(cwd)
        sys.argv = argv
    import importlib.util

    spec = importlib.util.spec_from_file_location("zimage_pack", os.path.join(ROOT, "__init__.py"), submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["zimage_pack"] = pack
    spec.loader.exec_module(pack)


class _DevicePeak:
    """The device's used memory, polled, above a baseline (CUDA); nothing on CPU."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak, self._stop = cuda, 0, threading.Event()

    def _used(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.base = self._used()
            torch.cuda.reset_peak_memory_stats()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used() - self.base)
            time.sleep(0.002)

    def __exit__(self, *_):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._used() - self.base)
            self.torch_peak = torch.cuda.max_memory_allocated()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="smoke run on CPU (dynamic VRAM off, no memory figures)")
    args = parser.parse_args()
    _start_comfyui(args.cpu)

    import comfy.memory_management
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.utils
    import torch
    from zimage_pack.loaders import demo_loras
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders import demo_quantized as dq
    from zimage_pack.nodes import native_gguf
    from zimage_pack.nodes.native_sampling import sample_turbo

    cuda = not args.cpu and torch.cuda.is_available()
    dynamic = comfy.model_patcher.CoreModelPatcher is comfy.model_patcher.ModelPatcherDynamic and comfy.memory_management.aimdo_enabled
    device = comfy.model_management.get_torch_device()
    print(f"device {device} ({torch.cuda.get_device_name() if cuda else 'cpu'}), dynamic VRAM {'on' if dynamic else 'OFF'}"
          + ("" if dynamic or args.cpu else "  <- goal: on (a default ComfyUI on an NVIDIA card)"))

    work = tempfile.mkdtemp(prefix="zimage_gguf_bench_")
    try:
        thin = {"dim": 3840, "n_layers": args.layers, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "cap_feat_dim": 2560, "axes_dims": [32, 48, 48]}
        module = dm.make_transformer(seed=0, **thin).to(torch.bfloat16)
        bf16_path = dm.write_transformer(module, os.path.join(work, "z_image_thin_bf16.safetensors"), "comfy")
        gguf_path = dq.write_gguf_transformer(module, os.path.join(work, "z_image_thin-Q8_0.gguf"), "Q8_0")
        lora_path = os.path.join(work, "lora_comfy_names.safetensors")
        demo_loras.write_lora(module, lora_path, "comfy", rank=16, seed=1)
        del module

        models = {"bf16 UNETLoader": comfy.sd.load_diffusion_model(bf16_path), "Q8_0 GGUF": native_gguf.load_gguf_transformer(gguf_path)}
        for name, model in models.items():
            print(f"{name}: {type(model).__name__} (dynamic {model.is_dynamic()}), {native_gguf.stored_bytes(model) / GIB:.2f} GiB held, "
                  f"inference dtype {model.model.get_dtype_inference()}")
        positive = [[torch.randn(1, 64, 2560, generator=torch.Generator().manual_seed(2)), {}]]
        latent = {"samples": torch.zeros(1, 16, args.size // 8, args.size // 8)}

        def run(model, steps):
            return sample_turbo(model, positive, None, dict(latent), seed=3, steps=steps, disable_pbar=True)["samples"]

        results = {name: {"seconds": [], "peak": [], "torch_peak": []} for name in models}
        outputs = {}
        for repeat in range(args.repeats):
            order = list(models) if repeat % 2 == 0 else list(reversed(models))
            for name in order:
                comfy.model_management.unload_all_models()
                comfy.model_management.soft_empty_cache()
                with _DevicePeak(cuda) as peak:
                    run(models[name], 1)  # warm-up (kernels, the first load)
                    if cuda:
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    outputs[name] = run(models[name], args.steps)
                    if cuda:
                        torch.cuda.synchronize()
                    results[name]["seconds"].append(time.perf_counter() - start)
                if cuda:
                    results[name]["peak"].append(peak.peak)
                    results[name]["torch_peak"].append(peak.torch_peak)

        print(f"\n{args.size}², {args.steps} steps, {args.layers} main layers, median of {args.repeats}:")
        for name, r in results.items():
            mem = f"device peak {statistics.median(r['peak']) / GIB:.2f} GiB (torch allocator {statistics.median(r['torch_peak']) / GIB:.2f} GiB)" if cuda else ""
            print(f"  {name:16s} {statistics.median(r['seconds']):7.2f} s/image  {mem}")
        bf16, gguf = results["bf16 UNETLoader"], results["Q8_0 GGUF"]
        print(f"  time GGUF / bf16: {statistics.median(gguf['seconds']) / statistics.median(bf16['seconds']):.2f} (for the record)")
        if cuda:
            ratio = statistics.median(gguf["peak"]) / statistics.median(bf16["peak"])
            print(f"  device peak GGUF / bf16: {ratio:.2f}  (goal < 1: {'met' if ratio < 1 else 'NOT met'})")

        def rel(a, b):
            return float((a.float() - b.float()).norm() / b.float().norm())

        error = rel(outputs["Q8_0 GGUF"], outputs["bf16 UNETLoader"])
        print(f"\nsample, GGUF against bf16: {error:.2e} relative  (goal ≤ {Q8_0_BOUND:.2e}: {'met' if error <= Q8_0_BOUND else 'NOT met'})")
        lora = comfy.utils.load_torch_file(lora_path)
        patched = {name: comfy.sd.load_lora_for_models(model, None, lora, 0.8, 0)[0] for name, model in models.items()}
        with_lora = {}
        for name, model in patched.items():
            comfy.model_management.unload_all_models()
            with_lora[name] = run(model, args.steps)
        # the LoRA's effect on each MODEL: equal up to the quantisation's small second-order share; 1.0 if it were skipped
        effect = {name: with_lora[name].float() - outputs[name].float() for name in models}
        lora_error = rel(effect["Q8_0 GGUF"], effect["bf16 UNETLoader"])
        print(f"LoRA's effect on the sample, GGUF against bf16: {lora_error:.2e} relative (a skipped LoRA: 1.0; the LoRA moves the "
              f"bf16 sample {rel(with_lora['bf16 UNETLoader'], outputs['bf16 UNETLoader']):.2e})  (goal ≤ 0.1: {'met' if lora_error <= 0.1 else 'NOT met'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
