"""Queue a 16384×16384 text-to-image prompt and a normal one right after it on a running ComfyUI
(127.0.0.1:8188): the first must be refused with the pack's memory message before anything is
allocated, the second must complete. Prints both outcomes and the server's peak RSS.

    python bench/comfyui/oversize_then_normal.py TRANSFORMER_FILE TEXT_ENCODER_FILE
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from queue_prompt import run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
base = json.load(open(os.path.join(HERE, "..", "..", "example_workflows", "api", "z_image_turbo_text_to_image_api.json")))
base["1"]["inputs"]["model_name"], base["2"]["inputs"]["text_encoder_name"] = sys.argv[1], sys.argv[2]
pid = subprocess.run(["pgrep", "-f", "main.py --cpu"], capture_output=True, text=True).stdout.split()[0]
for size, steps in ((16384, 1), (256, 2)):
    prompt = json.loads(json.dumps(base))
    prompt["5"]["inputs"].update(width=size, height=size)
    prompt["6"]["inputs"]["steps"] = steps
    out = run(prompt)
    status = out.get("status") or {}
    errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
    print(f"{size}×{size}: {status.get('status_str')}")
    for e in errors:
        print(f"  {e['node_type']}: {e['exception_message']}")
hwm = [line for line in open(f"/proc/{pid}/status") if line.startswith("VmHWM")][0].split()[1]
print(f"server peak RSS: {int(hwm) // 1024} MiB")
