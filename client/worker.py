"""One batch worker: drives one ComfyUI server (given by URL, or started on the worker's own node) over its
real API. ``run_job`` is idempotent per prompt id: it collects the job when the server has finished it,
follows it while it is queued, and sends it only when the server does not know it. So a call that is
repeated (a rerun of the client, or Ray retrying a call after the worker restarted) never runs a job twice
on a server that still has it."""

from __future__ import annotations

import queue
import threading
import time

from .comfy_process import ComfyProcess
from .server import ComfyServer, PromptRejected, ServerDown


class JobError(RuntimeError):
    """ComfyUI refused the job or ran it and it failed; ``str()`` is ComfyUI's message."""


class ServerGone(ConnectionError):
    """The server did not answer for longer than the worker's patience."""


FINISH_EVENTS = ("execution_success", "execution_error", "execution_interrupted", "closed")


class ServerWorker:
    def __init__(self, url: str | None = None, comfyui: str | None = None, comfyui_python: str | None = None, comfyui_args: tuple = (),
                 patience: float = 60.0, poll_seconds: float = 1.0):
        self.process = None
        if comfyui:
            self.process = ComfyProcess(comfyui, comfyui_python, tuple(comfyui_args))
            url = self.process.start()
        if not url:
            raise ValueError("a worker needs a server URL or a ComfyUI folder to start")
        self.patience, self.poll_seconds = patience, poll_seconds
        self.events: queue.Queue = queue.Queue()
        self.server = ComfyServer(url, self.events)
        self.url = self.server.url
        self.finished = threading.Condition()
        self.server.queue_length()  # answers now, or the worker is not made (ServerDown)
        self._listen()
        threading.Thread(target=self._wake_on_events, name=f"events {self.url}", daemon=True).start()

    def _listen(self) -> None:
        try:
            self.server.listen()
        except ServerDown:
            pass  # /history polling alone still finds every result, a little later

    def _wake_on_events(self) -> None:
        while True:
            _, kind, _ = self.events.get()
            if kind in FINISH_EVENTS:
                with self.finished:
                    self.finished.notify_all()

    # --- what the client asks ---
    def server_url(self) -> str:
        return self.url

    def object_info(self) -> dict:
        return self._answering(self.server.object_info)

    def progress(self) -> dict[str, tuple[int, int]]:
        return dict(self.server.progress)

    def run_job(self, graph: dict, prompt_id: str, extra_data: dict | None = None) -> dict:
        """{"outputs": [(server file name, bytes)], "seconds", "server"} once the server has run the job under
        ``prompt_id``. Raises JobError when ComfyUI refused or failed it, ServerGone when the server stopped answering."""
        started = time.monotonic()
        entry = self._answering(lambda: self.server.history(prompt_id))
        if entry is None and prompt_id not in self._answering(self.server.queued_ids):
            try:
                self._answering(lambda: self.server.submit(graph, prompt_id, extra_data or {}))
            except PromptRejected as err:
                raise JobError(f"rejected by {self.url}: {err}") from None
        while entry is None:
            with self.finished:
                self.finished.wait(self.poll_seconds)
            entry = self._answering(lambda: self.server.history(prompt_id))
        self.server.progress.pop(prompt_id, None)
        status = entry.get("status", {})
        if status.get("status_str") == "error":
            message = next((m[1].get("exception_message", "") for m in status.get("messages", []) if m and m[0] == "execution_error"), "execution error")
            raise JobError(f"{self.url}: {message.strip()}")
        outputs = []
        for _node, output in sorted(entry.get("outputs", {}).items()):
            for image in output.get("images", []):
                if image.get("type", "output") == "output":  # previews are not results
                    outputs.append((image.get("filename"), self._answering(lambda image=image: self.server.view(image))))
        return {"outputs": outputs, "seconds": round(time.monotonic() - started, 3), "server": self.url}

    def _answering(self, call):
        """``call()``, tried again while the server does not answer, for at most ``patience`` seconds."""
        deadline = time.monotonic() + self.patience
        while True:
            try:
                result = call()
                if not self.server.listening():
                    self._listen()  # the server is back: follow its events again
                return result
            except ServerDown as err:
                if self.process is not None and not self.process.alive():
                    raise ServerGone(f"{self.url}: the ComfyUI this worker started exited:\n{self.process.log_tail(1500)}") from None
                if time.monotonic() > deadline:
                    raise ServerGone(f"{self.url} has not answered for {self.patience:.0f} s ({err})") from None
                time.sleep(min(1.0, self.poll_seconds))

    def close(self) -> None:
        self.server.close()
        if self.process is not None:
            self.process.stop()
