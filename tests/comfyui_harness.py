"""A real ComfyUI for the ComfyUI test suite: where it is, and a server started from a copy of it on
loopback, with this pack linked into custom_nodes and tiny models made from a seed in its folders.

Where: COMFYUI_DIR; else the ComfyUI this pack is installed in (custom_nodes/<pack> → ../..); else the
project's ../shared/comfyui. Its Python: ZIMAGE_COMFYUI_PYTHON (scripts/test.sh sets it up with
scripts/setup_comfyui_env.sh). ``python tests/comfyui_harness.py`` prints the ComfyUI found (or nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_comfyui() -> Path | None:
    candidates = [os.environ.get("COMFYUI_DIR"), ROOT.parent.parent, os.environ.get("ZIMAGE_SHARED_DIR") and Path(os.environ["ZIMAGE_SHARED_DIR"]) / "comfyui",
                  ROOT.parent / "shared" / "comfyui"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "main.py").is_file() and (Path(candidate) / "comfy" / "model_management.py").is_file():
            return Path(candidate).resolve()
    return None


def comfyui_python() -> str | None:
    python = os.environ.get("ZIMAGE_COMFYUI_PYTHON")
    return python if python and os.access(python, os.X_OK) else None


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class ComfyServer:
    """``main.py --cpu`` from a copy of ComfyUI in ``work``, on a free loopback port. A watchdog kills
    it if its memory passes ``memory_limit`` (then ``killed_for_memory`` is set)."""

    def __init__(self, comfyui: Path, python: str, work: Path, memory_limit: int = 8 * 2**30, extra_args: tuple = ()):
        self.home = work / "ComfyUI"
        shutil.copytree(comfyui, self.home, ignore=shutil.ignore_patterns("__pycache__", ".git"))
        for folder in self.home.rglob("*"):  # the source may be read-only (CI's ../shared)
            if folder.is_dir():
                folder.chmod(0o755)
        os.symlink(ROOT, self.home / "custom_nodes" / "comfyui-zimage")
        self.python, self.memory_limit, self.killed_for_memory, self.peak_rss = python, memory_limit, False, 0
        self.extra_args = tuple(extra_args)
        self.log_path = work / "comfyui.log"
        self.proc = None
        self.url = ""

    def folder(self, name: str) -> Path:
        path = self.home / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self, timeout: float = 240) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name in ("ZIMAGE_INPUT_DIR", "ZIMAGE_OUTPUT_DIR", "ZIMAGE_MODELS_DIR", "ZIMAGE_TOKENIZER_DIR"):
            env.pop(name, None)  # inside ComfyUI its own folders count, nothing of the tests'
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen([self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
                                      "--database-url", "sqlite:///:memory:", *self.extra_args], cwd=self.home, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        threading.Thread(target=self._watch, daemon=True).start()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start ({self.proc.returncode}):\n{self.log_text()[-3000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log_text()[-3000:]}")

    def _watch(self) -> None:
        while self.proc is not None and self.proc.poll() is None:
            try:
                rss = rss_bytes(self.proc.pid)
            except OSError:
                return
            self.peak_rss = max(self.peak_rss, rss)
            if rss > self.memory_limit:
                self.killed_for_memory = True
                os.killpg(self.proc.pid, signal.SIGKILL)
                return
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    # HTTP -----------------------------------------------------------------------------------------
    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read()
                return response.status, json.loads(text) if text else {}
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue ``prompt``; {"refused": error body} when validation refuses it, else its /history entry."""
        status, body = self.post("/prompt", {"prompt": prompt})
        if status != 200:
            return {"refused": body}
        prompt_id = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died (memory watchdog: {self.killed_for_memory}):\n{self.log_text()[-3000:]}")
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")


def execution_error(entry: dict) -> dict | None:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


if __name__ == "__main__":
    found = find_comfyui()
    print(found or "")
