"""Seconds per image on a native Z-Image MODEL, side by side in one ComfyUI process (run it with ComfyUI's
Python, e.g. .venv-comfyui/bin/python; the ComfyUI is found as the tests find it: COMFYUI_DIR, the one the
pack is installed in, or ../shared/comfyui):

  - the native template (ModelSamplingAuraFlow 3 + KSampler res_multistep / simple / cfg 1) against the same
    MODEL with the pack's ZImageTurboSampler instead of KSampler — goal ≤ 1.02;
  - KSampler on a LoRA from the pack's ZImageLoraLoader against native LoraLoaderModelOnly's
    (comfy.sd.load_lora_for_models) of the same file — goal ≤ 1.02.

A thin real-width transformer (dim 3840, --layers main layers, the two refiners of each kind), random bf16
weights. Pairs alternate their order; the ratio is the median over --repeats pairs.

    python bench/comfyui/native_speed.py [--size 256] [--steps 8] [--layers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _setup_comfyui(gpu: bool):
    """ComfyUI imported in process: with --cpu, or (``gpu``) with its own device choice, dynamic VRAM included."""
    import runpy

    from comfyui_harness import find_comfyui

    comfyui = find_comfyui()
    if comfyui is None:
        sys.exit("no ComfyUI found: set COMFYUI_DIR")
    runpy.run_path(os.path.join(ROOT, "workflows", "comfy_runtime.py"))["import_comfyui"](str(comfyui), cpu=not gpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="leave ComfyUI's device choice on (default: --cpu)")
    args = parser.parse_args()
    _setup_comfyui(args.gpu)

    import comfy.sample
    import comfy.sd
    import comfy.utils
    import torch

    from zimage_pack.loaders import demo_loras, demo_models as dm
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow

    from safetensors.torch import load_file

    from zimage_pack.nodes.lora_nodes import ZImageLoraLoader
    from zimage_pack.nodes.native_twinflow import add_twinflow, sample_twinflow_native
    from zimage_pack.nodes.sampling_nodes import ZImageTurboSampler

    work = tempfile.mkdtemp(prefix="zimage_native_speed_")
    atexit.register(shutil.rmtree, work, True)  # nothing left in the temporary folder
    thin = dict(dim=3840, n_layers=args.layers, n_refiner_layers=2, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, axes_dims=[32, 48, 48])
    module = dm.make_transformer(seed=0, **thin).to(torch.bfloat16)
    path = dm.write_transformer(module, os.path.join(work, "z_image_thin_bf16.safetensors"), "comfy")
    lora = os.path.join(work, "lora_comfy_names.safetensors")
    demo_loras.write_lora(module, lora, "comfy", rank=64, seed=1)  # ComfyUI's own names: both loaders read it whole
    del module
    model = ModelSamplingAuraFlow().patch_aura(comfy.sd.load_diffusion_model(path), 3.0)[0]  # the native template's model
    positive = [[torch.randn(1, 64, 2560, generator=torch.Generator().manual_seed(2)), {}]]
    latent = torch.zeros(1, 16, args.size // 8, args.size // 8)

    def ksampler(m):  # the template's KSampler: res_multistep, simple, cfg 1
        return comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 7), args.steps, 1.0, "res_multistep", "simple", positive, [], latent.clone(),
                                   disable_pbar=True, seed=7)

    def turbo(m):
        return ZImageTurboSampler.execute(m, positive, {"samples": latent.clone()}, seed=7, steps=args.steps).result[0]["samples"]

    native_lora, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(lora), 1.0, 0)
    folder_paths_add(os.path.dirname(lora))
    pack_lora, report = ZImageLoraLoader.execute(model, os.path.basename(lora), 1.0).result
    assert "NOT applied" not in report, report
    # TwinFlow: the same weights with a random second embedder of t_embedder's shapes (what the file adds), 2 calls,
    # against the template's 8 steps; both decoded by the real-size FLUX VAE, as the workflows do
    state = load_file(path)
    generator = torch.Generator().manual_seed(3)
    embedder = {f"t_embedder_2.{k}": torch.randn(state[f"t_embedder.{k}"].shape, generator=generator) * 0.02
                for k in ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")}
    twin = add_twinflow(model, embedder)
    vae_path = dm.write_vae(dm.make_vae(seed=2, block_out_channels=[128, 256, 512, 512], layers_per_block=2), os.path.join(work, "ae.safetensors"))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))

    def twinflow_decoded():
        out, _ = sample_twinflow_native(twin, positive, {"samples": latent.clone()}, seed=7, nfe=2, disable_pbar=True)
        return vae.decode(out["samples"])

    def template_decoded():
        return vae.decode(ksampler(model))

    rows = [("ZImageTurboSampler / native KSampler (template)", lambda: turbo(model), lambda: ksampler(model), 1.02),
            ("LoRA: pack's patches / LoraLoaderModelOnly (KSampler)", lambda: ksampler(pack_lora), lambda: ksampler(native_lora), 1.02),
            (f"TwinFlow 2 NFE / template {args.steps} steps, decode included", twinflow_decoded, template_decoded, 0.30)]
    print(f"thin real-width Z-Image ({args.layers} main layers), {args.size}², {args.steps} steps, {args.repeats} pairs, "
          f"device {comfy.model_management.get_torch_device()}")
    for name, ours, theirs, goal in rows:
        ratios, same = [], None
        for i in range(args.repeats):
            order = [("ours", ours), ("theirs", theirs)] if i % 2 == 0 else [("theirs", theirs), ("ours", ours)]
            times, outs = {}, {}
            for label, run in order:
                start = time.perf_counter()
                outs[label] = run()
                times[label] = time.perf_counter() - start
            ratios.append(times["ours"] / times["theirs"])
            same = (outs["ours"] - outs["theirs"]).abs().max().item() if outs["ours"].shape == outs["theirs"].shape else float("nan")
        ratio = statistics.median(ratios)
        print(f"{name}: {ratio:.3f} (goal ≤ {goal}: {'met' if ratio <= goal else 'NOT met'}); outputs differ by {same:.2e} max abs; "
              f"ratios {', '.join(f'{r:.3f}' for r in ratios)}")


def folder_paths_add(folder: str) -> None:
    import folder_paths

    folder_paths.add_model_folder_path("loras", folder, is_default=True)


if __name__ == "__main__":
    main()
