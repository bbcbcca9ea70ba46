"""Native ComfyUI's Fun ControlNet (ModelPatchLoader + ZImageFunControlnet) and the pack's patch
(nodes/native_control.py) against the reference, per version, on the same weights and inputs (run it with
ComfyUI's Python, e.g. .venv-comfyui/bin/python; the ComfyUI is found as the tests find it).

Reference: the pack's diffusers engine in float32 (its ControlNet forward equals diffusers' pipeline for 1.0
and VideoX-Fun's code for 2.x; tests/test_controlnet.py, tests/test_controlnet_values.py). Weights: a thin
real-width Z-Image (dim 3840, --layers main layers, the two refiners of each kind) and real-width ControlNet
stand-ins in every published layout (tests/published_controlnets.py ``thin_state``: every value
fp8-representable, so native's loader, which builds the ControlNet in the file's dtype, holds exactly the
same numbers in fp8). ComfyUI computes the thin model in float32 on the CPU, as the reference does.

Printed per version and case: the velocity at σ (one model call through ComfyUI's sampling) as max abs and
relative (to max |v_ref|) error, for native and for the pack; the noise-refiner output (where 2.x's refiner
hints land) against the pack's (which equals the reference's); for 33 channels, native's control input
against the reference's. Two latent sizes: 8×8 (16 image tokens, padded to 32 by NextDiT) and 8×16
(32 tokens, no padding).

    python bench/comfyui/native_controlnet_vs_reference.py [--layers 1] [--sigma 0.6] [--strength 0.8]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "in_comfyui"))
sys.path.insert(0, HERE)

from native_speed import _setup_comfyui


class Recorder:
    """A noise-refiner patch that keeps the refined image tokens (after the last refiner block and its hints)."""

    def __init__(self):
        self.refined = None

    def __call__(self, kwargs):
        if kwargs["block_index"] == 1:
            self.refined = kwargs["img"].detach().float().clone()
        return {}


@contextlib.contextmanager
def file_contents(state):
    """ComfyUI's loader reads ``state`` instead of the (placeholder) file: a 2.x stand-in is 6.7 GB as a file."""
    import comfy.utils

    original = comfy.utils.load_torch_file
    comfy.utils.load_torch_file = lambda *a, **k: (state, {}) if k.get("return_metadata") else state
    try:
        yield
    finally:
        comfy.utils.load_torch_file = original


def native_state(state):
    """The stand-in as an fp8 file would hold it, except the one tensor native's loader tests for zeros
    (count_nonzero has no fp8 CPU kernel): bf16, same values."""
    import published_controlnets as published
    import torch

    out = published.cast(state, torch.float8_e4m3fn)
    key = "control_noise_refiner.0.after_proj.weight"
    if key in out:
        out[key] = state[key].to(torch.bfloat16)
    return out


def native_controlled(world, state, strength, image, inpaint, mask, folder):
    import folder_paths
    from comfy_extras.nodes_model_patch import ModelPatchLoader, ZImageFunControlnet

    name = "stand_in.safetensors"
    open(os.path.join(folder, name), "wb").close()
    folder_paths.add_model_folder_path("model_patches", folder, is_default=True)
    with file_contents(native_state(state)):
        (patch,) = ModelPatchLoader().load_model_patch(name)
    (model,) = ZImageFunControlnet().diffsynth_controlnet(world["native"], patch, world["vae"], image=image, strength=strength,
                                                          inpaint_image=inpaint, mask=mask)
    return model, patch


def with_recorder(model):
    recorder = Recorder()
    model = model.clone()
    model.set_model_noise_refiner_patch(recorder)
    return model, recorder


def measure(world, layout, latent_hw, case, args, folder):
    import controlnet_world as cw
    import torch
    from zimage_pack.nodes.native_control import apply_controlnet, controlnet_from_state
    from zimage_pack.samplers.control import ControlSpec

    state = cw.state_for(layout)
    h, w = latent_hw
    hint, inpaint, mask = cw.images(height=8 * h, width=8 * w)
    ref_cnet = cw.reference_controlnet(state)
    inpaint_on = case == "hint + inpaint + mask"
    kw = {"inpaint_image": inpaint, "mask": mask} if inpaint_on else {"inpaint_image": None, "mask": None}
    latent = torch.zeros(1, 16, h, w)
    features = cw.features()

    ours = apply_controlnet(world["native"], controlnet_from_state(state, "fp8_e4m3fn"), world["vae"], args.strength, image=hint, **kw)
    ours, our_rec = with_recorder(ours)
    x, v_ours = cw.velocity(ours, args.sigma, features, latent)
    spec = ControlSpec(ref_cnet, world["pack_vae"], hint, args.strength, inpaint_image=kw["inpaint_image"], mask=kw["mask"])
    v_ref = cw.reference_velocity(world["engine"], world["pack_vae"], [spec], x, args.sigma, features)
    row = {"pack": cw.relative(v_ours, v_ref)}
    try:
        theirs, their_patch = native_controlled(world, state, args.strength, hint, kw["inpaint_image"], kw["mask"], folder)
    except Exception as err:  # noqa: BLE001 - reported in the table
        row["native"] = f"does not load: {type(err).__name__}"
        return row
    theirs, their_rec = with_recorder(theirs)
    x2, v_native = cw.velocity(theirs, args.sigma, features, latent)
    assert torch.equal(x, x2)
    row.update(native=cw.relative(v_native, v_ref), refiner=cw.relative(their_rec.refined, our_rec.refined))
    if ref_cnet.inpaint_channels:
        our_patch = ours.model_options["transformer_options"]["patches"]["noise_refiner"][0]
        their_input = theirs.model_options["transformer_options"]["patches"]["noise_refiner"][0].encoded_image.float()
        row["input"] = cw.relative(their_input, our_patch.control_input(1, h, w))
    del their_patch, theirs
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--layouts", default="all", help="comma-separated keys of controlnet_world.LAYOUTS")
    parser.add_argument("--gpu", action="store_true", help="leave ComfyUI's device choice on (default: --cpu)")
    args = parser.parse_args()
    _setup_comfyui(args.gpu)
    import gc

    import comfy.model_management
    import controlnet_world as cw

    work = tempfile.mkdtemp(prefix="zimage_cn_vs_ref_")
    atexit.register(shutil.rmtree, work, True)  # nothing left in the temporary folder
    start = time.time()
    world = cw.make_world(work, args.layers)
    layouts = list(cw.LAYOUTS) if args.layouts == "all" else args.layouts.split(",")
    print(f"thin Z-Image, {args.layers} main layers, float32 compute ({world['native'].model.get_dtype_inference()}); σ {args.sigma}, "
          f"strength {args.strength}; error = max |v − v_ref| (relative: / max |v_ref|); goal for the pack ≤ 1e-3 relative")
    print(f"{'version':24} {'case':22} {'latent':7} {'native velocity':>22} {'pack velocity':>22} {'native refiner out':>22} {'native 33-ch input':>20}")
    for layout in layouts:
        cases = ["hint"] + (["hint + inpaint + mask"] if "1.0" not in layout else [])
        for case in cases:
            for hw in ((8, 8), (8, 16)) if case == "hint" else ((8, 16),):
                row = measure(world, layout, hw, case, args, work)

                def fmt(key, row=row):
                    value = row.get(key, "-")
                    return value if isinstance(value, str) else f"{value[0]:.2e} ({value[1]:.1e})"

                print(f"{layout:24} {case:22} {hw[0]}x{hw[1]:<5} {fmt('native'):>22} {fmt('pack'):>22} {fmt('refiner'):>22} {fmt('input'):>20}",
                      flush=True)
                comfy.model_management.unload_all_models()
                gc.collect()
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
