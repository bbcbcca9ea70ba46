"""16 GB check for ControlNet: the traced peak of one sampling step of the real-size Z-Image
transformer with a real-size Fun ControlNet Union 2.1 (15 control layers + 2 refiner control blocks,
33 input channels) at 1024×1024, with no GPU and no memory: both models are built under torch's
FakeTensorMode and the step runs inside MemTracker.

Goal (issue 5): transformer + 2.x ControlNet fit a 16 GB card (≤ 14.9 GiB usable) — with the
ControlNet in fp8 (bf16 compute).

    python bench/controlnet_memory.py [--size 1024]
"""

from __future__ import annotations

import argparse

import torch

USABLE_16GB = 14.9 * 2**30


def _fp8_layerwise(module: torch.nn.Module) -> None:
    """What diffusers' layerwise casting does (Linear weights stored in fp8, one layer upcast to bf16
    at a time), written with ``.data`` assignments: under FakeTensorMode ``module.to(dtype)``, which
    diffusers' hook uses, cannot swap fake parameters."""
    for linear in (m for m in module.modules() if isinstance(m, torch.nn.Linear)):
        for p in linear.parameters():
            p.data = p.data.to(torch.float8_e4m3fn)

        def up(mod, args):
            for p in mod.parameters():
                p.data = p.data.to(torch.bfloat16)

        def down(mod, args, out):
            for p in mod.parameters():
                p.data = p.data.to(torch.float8_e4m3fn)

        linear.register_forward_pre_hook(up)
        linear.register_forward_hook(down)


def traced_peak(controlnet_fp8: bool, size: int, caption_tokens: int, transformer_fp8: bool = False):
    from diffusers import ZImageControlNetModel, ZImageTransformer2DModel
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    import zimage_pack  # noqa: F401
    from zimage_pack.loaders.controlnet import ZImageControlNet
    from zimage_pack.samplers.control import forward_with_control

    with FakeTensorMode():
        torch.set_default_dtype(torch.bfloat16)
        transformer = ZImageTransformer2DModel()
        cnet_module = ZImageControlNetModel(control_layers_places=list(range(0, 30, 2)), control_refiner_layers_places=[0, 1], control_in_dim=33,
                                            add_control_noise_refiner="control_noise_refiner")
        torch.set_default_dtype(torch.float32)
        if controlnet_fp8:
            _fp8_layerwise(cnet_module)
        if transformer_fp8:
            _fp8_layerwise(transformer)
        block = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in cnet_module.control_layers)
        cnet = ZImageControlNet(cnet_module, "2.1", 33, torch.float8_e4m3fn if controlnet_fp8 else torch.bfloat16, torch.bfloat16, "fake")
        weights = {name: sum(p.numel() * p.element_size() for p in m.parameters()) for name, m in (("transformer", transformer), ("controlnet", cnet_module))}
        latent = size // 8
        x = [torch.randn(16, 1, latent, latent, dtype=torch.bfloat16)]
        caps = [torch.randn(caption_tokens, 2560, dtype=torch.bfloat16)]
        control = torch.randn(1, 33, latent, latent, dtype=torch.bfloat16)
        tracker = MemTracker()
        tracker.track_external(transformer, cnet_module)
        with tracker, torch.no_grad():
            forward_with_control(transformer, x, torch.tensor([0.5]), caps, [(cnet, control, 0.9)])
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    total = next(v for k, v in peak.items() if k == "Total")
    return weights, total, block


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--caption-tokens", type=int, default=512)
    args = parser.parse_args()
    gib = 2**30
    results = {}

    def show(label, weights_text, total):
        results[label] = total
        print(f"{label:48s} {weights_text:44s} peak {total / gib:5.2f} GiB  ({'fits' if total <= USABLE_16GB else 'does NOT fit'} 16 GB)")

    print(f"traced peak of one sampling step at {args.size}x{args.size}, {args.caption_tokens} caption tokens; 16 GB card: {USABLE_16GB / gib:.1f} GiB usable")
    for label, cnet_fp8, t_fp8 in (("transformer bf16 + ControlNet bf16", False, False), ("transformer bf16 + ControlNet fp8", True, False),
                                   ("transformer fp8 + ControlNet fp8", True, True)):
        weights, total, block = traced_peak(cnet_fp8, args.size, args.caption_tokens, t_fp8)
        show(label, f"weights {weights['transformer'] / gib:5.2f} + {weights['controlnet'] / gib:5.2f} GiB", total)
        if cnet_fp8 and not t_fp8:
            # group offloading keeps one control block on the device instead of the whole ControlNet
            offloaded = total - weights["controlnet"] + block
            show("transformer bf16 + ControlNet fp8, offload=True", f"weights {weights['transformer'] / gib:5.2f} + {block / gib:5.2f} GiB (1 block)", offloaded)
    best = min(results["transformer bf16 + ControlNet fp8, offload=True"], results["transformer fp8 + ControlNet fp8"])
    print(f"\nGOAL: transformer + 2.x ControlNet at {args.size}x{args.size} fit 16 GB (<= {USABLE_16GB / gib:.1f} GiB) with fp8 storage or offloading "
          f"of the control branch: {'MET' if best <= USABLE_16GB else 'NOT MET'}")


if __name__ == "__main__":
    main()
