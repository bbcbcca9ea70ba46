"""Host memory while loading a transformer file: peak RSS over the file size.

Goal (issue 2): loading holds no second full copy in host RAM, peak RSS / file size ≤ 1.3.
Each load runs in a fresh subprocess so its peak is its own. The file is a thin real-width
Z-Image (dim 3840, real block shapes, few blocks) in bf16, at least 500 MB.

    python bench/load_memory.py [--layers 1] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

GOAL = 1.3

CHILD = r"""
import json, os, sys, time
import torch
import zimage_pack
from zimage_pack.loaders.transformer import load_transformer
from diffusers import ZImageTransformer2DModel

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def vm_hwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))

kind, path = sys.argv[1], sys.argv[2]
before = rss()
start = time.perf_counter()
if kind == "ours":
    model = load_transformer(path).module
else:  # diffusers' own folder loader, for comparison
    model = ZImageTransformer2DModel.from_pretrained(path, torch_dtype=torch.bfloat16)
seconds = time.perf_counter() - start
# touch every weight, as a forward pass would
checksum = float(sum(torch.sum(p, dtype=torch.float32) for p in model.parameters()))
peak = vm_hwm()  # this process's own high-water mark (ru_maxrss would carry the parent's across exec)
print(json.dumps({"before": before, "peak": peak, "seconds": seconds, "checksum": checksum}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=1, help="main layers (refiners: 1 each)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    import torch

    import zimage_pack  # noqa: F401
    from zimage_pack.loaders import demo_models as dm

    work = tempfile.mkdtemp(prefix="zimage_bench_")
    single = os.path.join(work, "z_image_thin_bf16.safetensors")
    folder = os.path.join(work, "diffusers_folder")
    torch.set_default_dtype(torch.bfloat16)
    model = dm.make_transformer(seed=0, **{**dm.REAL_TRANSFORMER, "n_layers": args.layers, "n_refiner_layers": 1})
    dm.write_transformer(model, single, "comfy")
    dm.write_transformer(model, folder, "folder")
    del model
    torch.set_default_dtype(torch.float32)
    size = os.path.getsize(single)
    print(f"file: {single}  {size / 2**20:.0f} MiB (bf16, dim 3840, {args.layers} main + 2 refiner blocks)")

    rows = {}
    for kind, path in (("ours", single), ("diffusers from_pretrained (folder)", folder)):
        out = subprocess.run([sys.executable, "-c", CHILD, "ours" if kind == "ours" else "diffusers", path], capture_output=True, text=True, check=True)
        rows[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    for kind, r in rows.items():
        load_delta = r["peak"] - r["before"]
        print(f"{kind:38s} peak RSS {r['peak'] / 2**20:7.0f} MiB  (process before load {r['before'] / 2**20:5.0f} MiB)  "
              f"peak/file {r['peak'] / size:.2f}  (peak - before)/file {load_delta / size:.2f}  load {r['seconds']:.2f} s")
    ours = rows["ours"]
    ratio = (ours["peak"] - ours["before"]) / size
    print(f"\nGOAL: loading's peak RSS / file size <= {GOAL}:  ours {ratio:.2f}  -> {'MET' if ratio <= GOAL else 'NOT MET'}")
    print(f"(ratio of load times, ours / diffusers folder: {ours['seconds'] / rows['diffusers from_pretrained (folder)']['seconds']:.2f})")
    if not args.keep:
        import shutil

        shutil.rmtree(work)


if __name__ == "__main__":
    main()
