"""20 queued prompts on a running ComfyUI (127.0.0.1:8188), each our quantised text-to-image plus
native nodes on its outputs (LatentUpscaleBy, ImageScaleBy, SaveImage): prints the status and the
server's resident memory after each, then POST /free and checks that ComfyUI had unloaded our
models (the next run asks ComfyUI to load them again: 'Requested to load _Held' in its log).

    python bench/comfyui/alternate_with_native.py /path/to/comfyui.log
"""
import json
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from queue_prompt import run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LOG = sys.argv[1]
w = json.load(open(os.path.join(HERE, "..", "..", "example_workflows", "api", "z_image_turbo_text_to_image_api.json")))
w["1"]["inputs"]["model_name"] = "z_image_turbo_int8_convrot.safetensors"
w["2"]["inputs"]["text_encoder_name"] = "qwen_3_4b_fp8_mixed.safetensors"
w["5"]["inputs"].update(width=64, height=64)
w["20"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["6", 0], "upscale_method": "bilinear", "scale_by": 1.5}}
w["21"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["7", 0], "upscale_method": "bicubic", "scale_by": 2.0}}
w["22"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "native"}}
w["23"] = {"class_type": "ZImageVAEDecode", "inputs": {"samples": ["20", 0], "vae": ["3", 0], "tile_size": 0}}
w["24"] = {"class_type": "SaveImage", "inputs": {"images": ["23", 0], "filename_prefix": "native_up"}}
pid = subprocess.run(["pgrep", "-f", "main.py --cpu"], capture_output=True, text=True).stdout.split()[0]


def rss_mib():
    return int([line for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS")][0].split()[1]) // 1024


def loads():
    return open(LOG, encoding="utf-8", errors="replace").read().count("Requested to load _Held")


results = []
for i in range(20):
    w["6"]["inputs"]["seed"] = i
    w["4"]["inputs"]["text"] = f"a red fox number {i}"
    results.append((run(w)["status"]["status_str"], rss_mib()))
print("status, RSS MiB per run:", results)
before = loads()
req = urllib.request.Request("http://127.0.0.1:8188/free", data=json.dumps({"unload_models": True}).encode(), headers={"Content-Type": "application/json"})
urllib.request.urlopen(req)
w["6"]["inputs"]["seed"] = 100
print("after /free:", run(w)["status"]["status_str"], "- our models loaded again by ComfyUI:", loads() - before)
