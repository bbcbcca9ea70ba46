"""What a Fun ControlNet costs over plain sampling: the pack's patch (nodes/native_control.py) against native
ModelPatchLoader + ZImageFunControlnet, side by side in one ComfyUI process (run it with ComfyUI's Python,
e.g. .venv-comfyui/bin/python), on the same MODEL, weights, hint, seed and conditioning.

A thin real-width Z-Image (dim 3840, --layers main layers, the two refiners of each kind) and a real-width
Union 2.1 stand-in (tests/published_controlnets.py ``thin_state``; fp8 weights on both sides), native
KSampler (euler, simple, cfg 1) for --steps steps at --size². cost = seconds(with ControlNet) − seconds(plain);
printed: the pack's cost over native's (goal ≤ 1.0×), median over --repeats rounds in alternating order.
The pack's control layers attend over the image and the caption tokens (as the reference does), native's
over the image tokens only: at 256² that is 256 + 32 tokens against 256.

    python bench/comfyui/native_controlnet_speed.py [--size 256] [--steps 2] [--layers 1] [--repeats 3]
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
sys.path.insert(0, os.path.join(ROOT, "tests", "in_comfyui"))
sys.path.insert(0, HERE)

from native_speed import _setup_comfyui


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="leave ComfyUI's device choice on (default: --cpu)")
    args = parser.parse_args()
    _setup_comfyui(args.gpu)

    import comfy.model_management
    import comfy.sample
    import controlnet_world as cw
    import torch
    from native_controlnet_vs_reference import native_controlled
    from zimage_pack.nodes.native_control import apply_controlnet, controlnet_from_state

    work = tempfile.mkdtemp(prefix="zimage_cn_speed_")
    atexit.register(shutil.rmtree, work, True)  # nothing left in the temporary folder
    world = cw.make_world(work, args.layers, engine=False)
    state = cw.state_for("2.1")
    hint, _, _ = cw.images(height=args.size, width=args.size)
    latent = torch.zeros(1, 16, args.size // 8, args.size // 8)
    positive = [[cw.features(tokens=24)[None], {}]]
    theirs, _ = native_controlled(world, state, 0.9, hint, None, None, work)
    ours = apply_controlnet(world["native"], controlnet_from_state(state, "fp8_e4m3fn"), world["vae"], 0.9, image=hint)
    models = {"plain": world["native"], "native ZImageFunControlnet": theirs, "pack": ours}

    def run(model):
        noise = comfy.sample.prepare_noise(latent, 7)
        start = time.perf_counter()
        with torch.inference_mode():  # as ComfyUI runs its nodes
            comfy.sample.sample(model, noise, args.steps, 1.0, "euler", "simple", positive, [], latent.clone(), disable_pbar=True, seed=7)
        return time.perf_counter() - start

    for model in models.values():  # warm-up: loading, the control image's encode
        run(model)
    times = {name: [] for name in models}
    order = list(models)
    for r in range(args.repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            times[name].append(run(models[name]))
    median = {name: statistics.median(t) for name, t in times.items()}
    native_cost = median["native ZImageFunControlnet"] - median["plain"]
    pack_cost = median["pack"] - median["plain"]
    device = comfy.model_management.get_torch_device()
    print(f"thin Z-Image ({args.layers} main layers), Union 2.1 stand-in in fp8, {args.size}², {args.steps} steps, {device}, median of {args.repeats}")
    for name, t in median.items():
        print(f"  {name:28} {t:7.2f} s")
    print(f"ControlNet cost over plain sampling: native {native_cost:.2f} s, pack {pack_cost:.2f} s; "
          f"pack / native = {pack_cost / native_cost:.2f}× (goal ≤ 1.0×)")


if __name__ == "__main__":
    main()
