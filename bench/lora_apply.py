"""Time to apply and to remove a rank-64 LoRA (all attention and feed-forward weights) on a
real-width Z-Image (dim 3840), ours against diffusers' load_lora_adapter + fuse_lora / unfuse_lora
on the same weights, in one process.

Goal (issue 3): ours / diffusers ≤ 1.0 for apply and for remove.

    python bench/lora_apply.py [--layers 3] [--rank 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

GOAL = 1.0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()

    from safetensors.torch import load_file

    import zimage_pack  # noqa: F401
    from zimage_pack.loaders import demo_loras, demo_models as dm
    from zimage_pack.loaders.lora_merge import merge_state, prepare_lora, sync_lora_stack
    from zimage_pack.loaders.transformer import load_transformer

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    work = tempfile.mkdtemp(prefix="zimage_lora_bench_")
    path = os.path.join(work, "thin.safetensors")
    torch.set_default_dtype(dtype)
    model = dm.make_transformer(seed=0, **{**dm.REAL_TRANSFORMER, "n_layers": args.layers, "n_refiner_layers": 1})
    dm.write_transformer(model, path, "diffusers")
    torch.set_default_dtype(torch.float32)
    lora_path = os.path.join(work, "lora_peft.safetensors")
    targets = demo_loras.write_lora(model, lora_path, "peft", rank=args.rank, blocks=("layers", "noise_refiner", "context_refiner"), dtype=dtype)
    del model
    ours = load_transformer(path)
    theirs = load_transformer(path)
    lora_mb = os.path.getsize(lora_path) / 2**20
    print(f"model: dim 3840, {args.layers} main + 2 refiner blocks, {args.dtype}; LoRA rank {args.rank} on {len(targets)} weights ({lora_mb:.0f} MiB)")
    print(f"threads: {torch.get_num_threads()}")

    state = merge_state(ours.module)

    def ours_apply():
        patch, _ = prepare_lora(ours.module, lora_path, 1.0)
        sync_lora_stack(ours.module, (patch,))

    def ours_remove():
        sync_lora_stack(ours.module, ())

    sd = load_file(lora_path)

    def theirs_apply():
        theirs.module.load_lora_adapter(sd, prefix="transformer", adapter_name="bench")
        theirs.module.fuse_lora(lora_scale=1.0)

    def theirs_remove():
        theirs.module.unfuse_lora()
        theirs.module.unload_lora()

    def fuse_only():
        theirs.module.fuse_lora(lora_scale=1.0)

    def unfuse_only():
        theirs.module.unfuse_lora()

    rows = []
    for label, apply, remove in (("ours", ours_apply, ours_remove), ("diffusers", theirs_apply, theirs_remove)):
        apply_times, remove_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter(); apply(); apply_times.append(time.perf_counter() - start)
            start = time.perf_counter(); remove(); remove_times.append(time.perf_counter() - start)
        rows.append((label, statistics.median(apply_times), statistics.median(remove_times)))
    theirs.module.load_lora_adapter(sd, prefix="transformer", adapter_name="bench_fuse_only")
    fuse_times, unfuse_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter(); fuse_only(); fuse_times.append(time.perf_counter() - start)
        start = time.perf_counter(); unfuse_only(); unfuse_times.append(time.perf_counter() - start)
    fuse_row = ("diffusers fuse_lora / unfuse_lora only (adapter loaded beforehand)", statistics.median(fuse_times), statistics.median(unfuse_times))
    for label, a, r in rows + [fuse_row]:
        print(f"{label:12s} apply {a:7.3f} s   remove {r:7.3f} s   (median of {args.repeats})")
    (_, oa, orm), (_, ta, trm) = rows
    print(f"\nGOAL apply  ours/diffusers <= {GOAL}: {oa / ta:.3f}  -> {'MET' if oa / ta <= GOAL else 'NOT MET'}")
    print(f"GOAL remove ours/diffusers <= {GOAL}: {orm / trm:.4f}  -> {'MET' if orm / trm <= GOAL else 'NOT MET'}")
    print(f"against fuse_lora / unfuse_lora alone: apply {oa / fuse_row[1]:.3f}, remove {orm / fuse_row[2]:.4f}")
    print(f"(ours wrote {state.weights_written} weights over all runs; diffusers' apply includes building PEFT layers, as loading a LoRA does)")
    import shutil

    shutil.rmtree(work)


if __name__ == "__main__":
    main()
