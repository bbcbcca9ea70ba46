"""Interrupt inside a long transformer call: queue a one-step prompt of SIZE² on a running ComfyUI
(127.0.0.1:8188), POST /interrupt after a delay, and time how long the server takes to stop (at most
one transformer block); then a normal prompt must complete.

    python bench/comfyui/interrupt_long_step.py TRANSFORMER_FILE TEXT_ENCODER_FILE [delay_s] [size]
"""
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from queue_prompt import get, post, run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
base = json.load(open(os.path.join(HERE, "..", "..", "example_workflows", "api", "z_image_turbo_text_to_image_api.json")))
base["1"]["inputs"]["model_name"], base["2"]["inputs"]["text_encoder_name"] = sys.argv[1], sys.argv[2]
delay = float(sys.argv[3]) if len(sys.argv) > 3 else 20
size = int(sys.argv[4]) if len(sys.argv) > 4 else 1536
big = json.loads(json.dumps(base))
big["5"]["inputs"].update(width=size, height=size)
big["6"]["inputs"].update(steps=1, seed=7)
pid = post("/prompt", {"prompt": big})["prompt_id"]
time.sleep(delay)
asked = time.time()
urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:8188/interrupt", data=b"{}", headers={"Content-Type": "application/json"}))
while True:
    history = get(f"/history/{pid}")
    if pid in history and history[pid].get("status", {}).get("completed") is not None:
        break
    time.sleep(0.2)
print(f"interrupted: {history[pid]['status']['status_str']}, stopped {time.time() - asked:.1f} s after /interrupt")
small = json.loads(json.dumps(base))
small["5"]["inputs"].update(width=256, height=256)
small["6"]["inputs"]["steps"] = 2
print("next prompt:", run(small)["status"]["status_str"])
