"""One ComfyUI server over its real API: POST /prompt, GET /queue, /history/{id}, /view, /object_info,
and the /ws event stream (progress, success, errors) read on a background thread."""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid

import websocket  # websocket-client

TIMEOUT = 10.0


class ServerDown(ConnectionError):
    """The server did not answer (refused, reset, timed out)."""


class PromptRejected(ValueError):
    """The server refused the prompt (HTTP 400: validation errors)."""


class ComfyServer:
    def __init__(self, url: str, events: "queue.Queue | None" = None):
        self.url = url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.client_id = uuid.uuid4().hex
        self.events = events if events is not None else queue.Queue()
        self.progress: dict[str, tuple[int, int]] = {}  # prompt id → (value, max) of the running node
        self._socket = None
        self._thread = None

    def __repr__(self):
        return self.url

    def _request(self, path: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            if err.code == 400 and path == "/prompt":
                raise PromptRejected(_rejection_text(err.read())) from None
            raise ServerDown(f"{self.url}{path}: HTTP {err.code}") from None
        except (urllib.error.URLError, OSError) as err:
            raise ServerDown(f"{self.url}: {getattr(err, 'reason', err)}") from None

    def _json(self, path: str, body: dict | None = None):
        return json.loads(self._request(path, body))

    def object_info(self) -> dict:
        return self._json("/object_info")

    def queue_length(self) -> int:
        state = self._json("/queue")
        return len(state.get("queue_running", [])) + len(state.get("queue_pending", []))

    def queued_ids(self) -> set[str]:
        state = self._json("/queue")
        return {item[1] for item in state.get("queue_running", []) + state.get("queue_pending", [])}

    def submit(self, prompt: dict, prompt_id: str, extra_data: dict | None = None) -> str:
        """Queues ``prompt`` under our own ``prompt_id`` (recorded in the job file before sending, so a
        rerun finds it on the server instead of sending it twice)."""
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id, "extra_data": extra_data or {}}
        answer = self._json("/prompt", body)
        if answer.get("node_errors"):
            raise PromptRejected(json.dumps(answer["node_errors"])[:2000])
        return answer.get("prompt_id", prompt_id)

    def history(self, prompt_id: str) -> dict | None:
        """The finished entry ({outputs, status}) or None while it is not finished."""
        entry = self._json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)
        if not entry:
            return None
        status = entry.get("status", {})
        return entry if status.get("completed") or status.get("status_str") in ("success", "error") else None

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image.get("type", "output")})
        return self._request(f"/view?{query}")

    # --- /ws ---
    def listen(self) -> None:
        """Connects /ws on a background thread; events go to ``self.events`` as (server, type, data)."""
        if self.listening():
            return
        ws_url = self.url.replace("http://", "ws://").replace("https://", "wss://") + f"/ws?clientId={self.client_id}"
        try:
            self._socket = websocket.create_connection(ws_url, timeout=TIMEOUT)
        except (OSError, websocket.WebSocketException) as err:
            raise ServerDown(f"{ws_url}: {err}") from None
        self._socket.settimeout(None)
        self._thread = threading.Thread(target=self._read_events, name=f"ws {self.url}", daemon=True)
        self._thread.start()

    def listening(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _read_events(self) -> None:
        try:
            while True:
                message = self._socket.recv()
                if isinstance(message, bytes):
                    continue  # preview images
                event = json.loads(message)
                data = event.get("data", {})
                if event.get("type") == "progress" and data.get("prompt_id"):
                    self.progress[data["prompt_id"]] = (data.get("value", 0), data.get("max", 0))
                self.events.put((self, event.get("type"), data))
        except (OSError, websocket.WebSocketException, ValueError):
            self.events.put((self, "closed", {}))

    def close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            except Exception:
                pass


def _rejection_text(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return body[:500].decode(errors="replace")
    lines = [answer.get("error", {}).get("message", "")] if isinstance(answer.get("error"), dict) else []
    for node_id, node in (answer.get("node_errors") or {}).items():
        for error in node.get("errors", []):
            lines.append(f"node {node_id} ({node.get('class_type')}): {error.get('message')}: {error.get('details')}")
    return "; ".join(line for line in lines if line) or body[:500].decode(errors="replace")
