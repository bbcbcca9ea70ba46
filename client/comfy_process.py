"""A ComfyUI started by a batch worker on its own node (``zimage-queue --comfyui DIR``): loopback only, a free
port, its own output, temp and user folders and an in-memory database (so several on one node do not share files),
and it dies with the worker process that started it (Linux: the parent-death signal)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: stop() still ends it when the batch ends


class ComfyProcess:
    def __init__(self, comfyui_dir: str, python: str | None = None, extra_args: tuple[str, ...] = (), start_timeout: float = 600.0):
        if not os.path.isfile(os.path.join(comfyui_dir, "main.py")):
            raise FileNotFoundError(f"--comfyui {comfyui_dir!r}: no main.py there (expected a ComfyUI folder with this pack in custom_nodes/)")
        self.comfyui_dir, self.python = os.path.abspath(comfyui_dir), python or sys.executable
        self.extra_args, self.start_timeout = tuple(extra_args), start_timeout
        self.work = tempfile.mkdtemp(prefix="zimage-queue-comfyui-")
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        os.makedirs(os.path.join(self.work, "user"), exist_ok=True)
        # ComfyUI takes the last of a repeated option: extra_args may name other folders
        command = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
                   "--output-directory", os.path.join(self.work, "output"), "--temp-directory", os.path.join(self.work, "temp"),
                   "--user-directory", os.path.join(self.work, "user"), "--database-url", "sqlite:///:memory:", *self.extra_args]
        self.log_path = os.path.join(self.work, "comfyui.log")
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(command, cwd=self.comfyui_dir, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI in {self.comfyui_dir} exited at start ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=5):
                    return self.url
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI in {self.comfyui_dir} did not answer within {self.start_timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, characters: int = 3000) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()[-characters:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)
