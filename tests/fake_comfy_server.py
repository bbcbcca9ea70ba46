"""A small server speaking ComfyUI's API as ComfyUI v0.33 does (aiohttp, like ComfyUI itself), for the
queue client's tests: POST /prompt (client-chosen prompt_id, 400 with node_errors for an unknown
class), GET /queue, /history/{id}, /view, /object_info, /system_stats, and /ws with status, execution_start,
executing, progress, executed, execution_success / execution_error. Each job "runs" for --seconds
and writes a small PNG; every finished execution is appended to --log (to count executions).

    python tests/fake_comfy_server.py --object-info info.json --log runs.jsonl [--port 0] [--seconds 0.3] [--fail-seed 13]
prints "listening on PORT" once it accepts connections."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid

from aiohttp import WSMsgType, web
from PIL import Image


class FakeComfy:
    def __init__(self, object_info: dict, log_path: str, seconds: float, fail_seed: int | None, output_dir: str):
        self.object_info, self.log_path, self.seconds, self.fail_seed = object_info, log_path, seconds, fail_seed
        self.output_dir = output_dir
        self.pending: list[tuple] = []
        self.running: list[tuple] = []
        self.history: dict[str, dict] = {}
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.number = 0
        self.wake = asyncio.Event()

    async def send(self, kind: str, data: dict, client_id: str | None = None) -> None:
        targets = [self.sockets[client_id]] if client_id in self.sockets else ([] if client_id else list(self.sockets.values()))
        for ws in targets:
            try:
                await ws.send_str(json.dumps({"type": kind, "data": data}))
            except (ConnectionError, RuntimeError):
                pass

    async def status(self) -> None:
        await self.send("status", {"status": {"exec_info": {"queue_remaining": len(self.pending) + len(self.running)}}})

    # --- routes ---
    async def ws(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[client_id] = ws
        await ws.send_str(json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": len(self.pending) + len(self.running)}}, "sid": client_id}}))
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                break
        self.sockets.pop(client_id, None)
        return ws

    async def post_prompt(self, request):
        body = await request.json()
        prompt = body.get("prompt")
        if not isinstance(prompt, dict):
            return web.json_response({"error": {"type": "no_prompt", "message": "No prompt provided"}, "node_errors": {}}, status=400)
        errors = {k: {"errors": [{"type": "missing_node_type", "message": "Node not found", "details": n.get("class_type")}], "class_type": n.get("class_type")}
                  for k, n in prompt.items() if n.get("class_type") not in self.object_info}
        if errors:
            return web.json_response({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"}, "node_errors": errors}, status=400)
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        self.number += 1
        self.pending.append((self.number, prompt_id, prompt, {"client_id": body.get("client_id"), **body.get("extra_data", {})}, []))
        self.wake.set()
        await self.status()
        return web.json_response({"prompt_id": prompt_id, "number": self.number, "node_errors": {}})

    async def system_stats(self, request):
        return web.json_response({"system": {"comfyui_version": "test server"}, "devices": []})

    async def get_queue(self, request):
        return web.json_response({"queue_running": self.running, "queue_pending": self.pending})

    async def get_history(self, request):
        prompt_id = request.match_info["prompt_id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def view(self, request):
        path = os.path.join(self.output_dir, request.query.get("subfolder", ""), request.query["filename"])
        if request.query.get("type", "output") != "output" or not os.path.isfile(path):
            return web.Response(status=404)
        return web.FileResponse(path)

    async def get_object_info(self, request):
        return web.json_response(self.object_info)

    # --- the "execution" ---
    async def worker(self) -> None:
        while True:
            if not self.pending:
                self.wake.clear()
                await self.wake.wait()
                continue
            item = self.pending.pop(0)
            self.running = [item]
            _, prompt_id, prompt, extra, _ = item
            client = extra.get("client_id")
            seed = next((n["inputs"].get("seed") for n in prompt.values() if isinstance(n["inputs"].get("seed"), int)), None)
            await self.send("execution_start", {"prompt_id": prompt_id, "timestamp": int(time.time() * 1000)}, client)
            steps = 4
            for step in range(steps):
                await self.send("progress", {"value": step + 1, "max": steps, "prompt_id": prompt_id, "node": "6"}, client)
                await asyncio.sleep(self.seconds / steps)
            if self.fail_seed is not None and seed == self.fail_seed:
                message = {"prompt_id": prompt_id, "node_id": "6", "exception_message": f"fake failure for seed {seed}", "exception_type": "RuntimeError"}
                self.history[prompt_id] = {"prompt": list(item), "outputs": {}, "status": {"status_str": "error", "completed": False,
                                           "messages": [["execution_start", {"prompt_id": prompt_id}], ["execution_error", message]]}}
                await self.send("execution_error", message, client)
            else:
                name = f"fake_{prompt_id[:8]}_00001_.png"
                Image.new("RGB", (8, 8), ((seed or 0) % 256, 40, 90)).save(os.path.join(self.output_dir, name))
                outputs = {"9": {"images": [{"filename": name, "subfolder": "", "type": "output"}]}}
                self.history[prompt_id] = {"prompt": list(item), "outputs": outputs, "status": {"status_str": "success", "completed": True, "messages": []}}
                await self.send("executed", {"node": "9", "output": outputs["9"], "prompt_id": prompt_id}, client)
                await self.send("execution_success", {"prompt_id": prompt_id, "timestamp": int(time.time() * 1000)}, client)
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"prompt_id": prompt_id, "seed": seed, "job": extra.get("zimage_queue_job"),
                                         "ok": self.history[prompt_id]["status"]["status_str"] == "success", "pid": os.getpid()}) + "\n")
                handle.flush()
            self.running = []
            await self.send("executing", {"node": None, "prompt_id": prompt_id}, client)
            await self.status()


async def serve(args) -> None:
    with open(args.object_info, encoding="utf-8") as handle:
        info = json.load(handle)
    os.makedirs(args.output_dir, exist_ok=True)
    fake = FakeComfy(info, args.log, args.seconds, args.fail_seed, args.output_dir)
    app = web.Application()
    app.add_routes([web.get("/ws", fake.ws), web.post("/prompt", fake.post_prompt), web.get("/queue", fake.get_queue),
                    web.get("/history/{prompt_id}", fake.get_history), web.get("/view", fake.view), web.get("/object_info", fake.get_object_info),
                    web.get("/system_stats", fake.system_stats)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening on {port}", flush=True)
    await fake.worker()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--object-info", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--output-dir", required=True, help="where the pictures go (the test's own folder: a killed server leaves nothing behind)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--fail-seed", type=int, default=None)
    asyncio.run(serve(parser.parse_args()))
