"""16 GB check for the 2-step path with the real-size transformer (6.15 B parameters), no GPU needed.

The worst case: a bundle whose two steps differ in every weight (two 11.5 GiB parameter sets).
Reports the bytes moved per swap and the peak bytes resident on the device, for bf16 and fp8 storage:
the module holds one set at a time (the other waits in pinned host memory), so the device peak is
one set + activations + the largest single tensor in flight during the swap. Activations are traced
on the real-size model under FakeTensorMode with torch's MemTracker (no memory is allocated).

Goal (issue 4): the peak fits a 16 GB card (≤ 14.9 GiB usable after the CUDA context).

    python bench/two_step_memory.py [--size 1024]
"""

from __future__ import annotations

import argparse
import time

import torch

USABLE_16GB = 14.9 * 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024, help="image size in pixels")
    parser.add_argument("--caption-tokens", type=int, default=512)
    args = parser.parse_args()

    from diffusers import ZImageTransformer2DModel
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    start = time.perf_counter()
    with FakeTensorMode():
        torch.set_default_dtype(torch.bfloat16)
        model = ZImageTransformer2DModel()  # the real config: dim 3840, 30 + 2 + 2 blocks
        torch.set_default_dtype(torch.float32)
        params = list(model.parameters())
        set_bytes = sum(p.numel() * p.element_size() for p in params)
        largest = max(p.numel() * p.element_size() for p in params)
        latent = args.size // 8
        x = [torch.randn(16, 1, latent, latent, dtype=torch.bfloat16)]
        caps = [torch.randn(args.caption_tokens, 2560, dtype=torch.bfloat16)]
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker, torch.no_grad():
            model(x, torch.tensor([0.5]), caps, return_dict=False)
        peak = tracker.get_tracker_snapshot("peak")
    device_peak = next(iter(peak.values()))
    kinds = {str(k).split(".")[-1].split(":")[0].strip("<>'"): v for k, v in device_peak.items()}
    activations = sum(v for k, v in device_peak.items() if "ACT" in str(k) or "TEMP" in str(k))
    gib = 2**30
    print(f"real-size Z-Image transformer: {sum(p.numel() for p in params) / 1e9:.2f} B parameters; traced at {args.size}x{args.size}, "
          f"{args.caption_tokens} caption tokens in {time.perf_counter() - start:.1f} s")
    print(f"forward peak (MemTracker): parameters {set_bytes / gib:.2f} GiB + activations {activations / gib:.2f} GiB = {kinds.get('Total', 0) / gib:.2f} GiB")
    print()
    print("worst case: every weight differs between the two steps")
    for label, factor in (("bf16 storage", 1.0), ("fp8 storage (bf16 compute)", 0.5)):
        one_set = set_bytes * factor
        moved = one_set  # step 1 -> step 2 (and the same back at the next prompt's step 1)
        resident = one_set + activations + largest * factor
        host = 2 * one_set
        verdict = "fits" if resident <= USABLE_16GB else "does NOT fit"
        print(f"  {label:28s} moved per swap {moved / gib:6.2f} GiB   device peak {resident / gib:6.2f} GiB ({verdict} 16 GB: "
              f"{USABLE_16GB / gib:.1f} GiB usable)   pinned host memory {host / gib:6.2f} GiB")
    print("  (keeping both sets on the device would need "
          f"{(2 * set_bytes + activations) / gib:.2f} GiB in bf16: that is what the swap avoids)")
    print("\nGOAL: device peak ≤ 14.9 GiB on a 16 GB card in the worst case: "
          f"{'MET' if set_bytes + activations + largest <= USABLE_16GB else 'NOT MET'} (bf16)")


if __name__ == "__main__":
    main()
