"""Queue an API workflow on the local ComfyUI (127.0.0.1:8188) and wait for it."""
import json, sys, time, urllib.request

BASE = "http://127.0.0.1:8188"

def post(path, body):
    req = urllib.request.Request(BASE + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        return json.load(urllib.request.urlopen(req))
    except urllib.error.HTTPError as e:
        return {"http_error": e.code, "body": json.loads(e.read())}

def get(path):
    return json.load(urllib.request.urlopen(BASE + path))

def run(prompt, timeout=900):
    r = post("/prompt", {"prompt": prompt})
    if "prompt_id" not in r:
        return r
    pid = r["prompt_id"]
    for _ in range(timeout * 2):
        h = get(f"/history/{pid}")
        if pid in h and h[pid].get("status", {}).get("completed") is not None and (h[pid]["status"]["completed"] or h[pid]["status"].get("status_str") == "error"):
            return h[pid]
        time.sleep(0.5)
    return {"timeout": pid}

if __name__ == "__main__":
    prompt = json.load(open(sys.argv[1]))
    for k, v in json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}").items():
        node, name = k.split(".")
        prompt[node]["inputs"][name] = v
    out = run(prompt)
    print(json.dumps({k: out.get(k) for k in ("status", "outputs", "http_error", "body", "timeout")}, indent=1)[:3000])
