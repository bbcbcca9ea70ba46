"""The batch on Ray: one worker actor per ComfyUI server (client/worker.py), jobs as calls on those actors.

Ray does what the client used to do itself: it places the workers (a worker that starts its own ComfyUI
asks for a GPU and gets CUDA_VISIBLE_DEVICES for it), restarts a worker whose process or node died
(``max_restarts``) and retries the calls it had in flight on the restarted one (``max_task_retries``;
``run_job`` is idempotent per prompt id, so a retried call collects a job its server already ran), and
shows it all on its dashboard. The client bounds the calls in flight per worker (backpressure).

A worker whose own ComfyUI died exits its process, so Ray restarts it with a fresh ComfyUI. A worker whose
server (by URL) stopped answering cannot bring it back: the client ends that worker and its jobs go to the
others."""

from __future__ import annotations

import os

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from .pools import WorkerLost
from .worker import ServerGone, ServerWorker

MAX_RESTARTS = 3


class RayServerWorker(ServerWorker):
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run_job(self, graph: dict, prompt_id: str, extra_data: dict | None = None) -> dict:
        try:
            return super().run_job(graph, prompt_id, extra_data)
        except ServerGone:
            if self.process is not None:
                self.process.stop()  # its folders
                os._exit(1)  # the ComfyUI this worker started died: Ray restarts the worker (a new ComfyUI) and retries its calls
            raise


def start_ray(address: str | None = None) -> bool:
    """Connects to ``address`` (a cluster: "auto", "ray://head:10001") or starts Ray on this machine; False
    when Ray was already up (then it is left running)."""
    if ray.is_initialized():
        return False
    ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    return True


class RayPool:
    def __init__(self, urls: list[str] = (), comfyui: str | None = None, workers: int | None = None, comfyui_python: str | None = None,
                 comfyui_args: tuple = (), gpus_per_server: float = 1.0, per_server: int = 2, patience: float = 60.0, poll_seconds: float = 1.0,
                 address: str | None = None, actor_options: dict | None = None):
        self.owns_ray = start_ray(address)
        self.capacity = per_server
        actor = ray.remote(RayServerWorker)
        options = dict(max_restarts=MAX_RESTARTS, max_task_retries=-1, max_concurrency=per_server + 2, num_cpus=0)
        common = dict(patience=patience, poll_seconds=poll_seconds)
        self.by_url = not comfyui
        self.actors: dict[str, ray.actor.ActorHandle] = {}
        if comfyui:
            count = workers or int(ray.cluster_resources().get("GPU", 0)) or 1
            own = dict(options, num_gpus=gpus_per_server, **(actor_options or {}))
            for index in range(count):
                self.actors[f"worker-{index}"] = actor.options(**own).remote(comfyui=comfyui, comfyui_python=comfyui_python, comfyui_args=tuple(comfyui_args), **common)
        else:
            for url in urls:
                handle = actor.options(**dict(options, **(actor_options or {}))).remote(url=url, **common)
                self.actors[handle_key(url)] = handle
        self.urls: dict[str, str] = {}
        for key, handle in list(self.actors.items()):
            try:
                self.urls[key] = ray.get(handle.server_url.remote())
            except (RayActorError, ray.exceptions.RayTaskError) as err:
                print(f"zimage-queue: {key} left out: {_cause(err)}", flush=True)
                self._end(key)
        if not self.actors:
            raise ConnectionError("no worker could reach its server: " + ", ".join(urls or [str(comfyui)]))
        self.calls: dict = {}  # ObjectRef → worker key

    def keys(self) -> list[str]:
        return list(self.actors)

    def server_of(self, key: str) -> str:
        return self.urls[key]

    def key_for_server(self, url: str | None) -> str | None:
        """The worker that drives ``url``, only for servers given by URL (a started ComfyUI is new each run)."""
        return next((k for k, u in self.urls.items() if u == url and k in self.actors), None) if self.by_url else None

    def node_of(self, key: str) -> str:
        return ray.get(self.actors[key].node.remote())

    def object_infos(self) -> dict[str, dict]:
        infos = {}
        for key in list(self.actors):
            try:
                infos[self.urls[key]] = ray.get(self.actors[key].object_info.remote())
            except (RayActorError, ray.exceptions.RayTaskError) as err:
                print(f"zimage-queue: {key} left out: {_cause(err)}", flush=True)
                self._end(key)
        return infos

    def submit(self, key: str, graph: dict, prompt_id: str, extra_data: dict):
        ref = self.actors[key].run_job.remote(graph, prompt_id, extra_data)
        self.calls[ref] = key
        return ref

    @staticmethod
    def wait(handles: list, timeout: float) -> list:
        return ray.wait(handles, num_returns=1, timeout=timeout)[0] if handles else []

    def result(self, ref) -> dict:
        key = self.calls.pop(ref)
        try:
            result = ray.get(ref)  # a JobError (ComfyUI failed the job) goes to the caller as it is
        except ServerGone as err:  # a server by URL stopped answering: its worker ends, the others take its jobs
            self._end(key)
            raise WorkerLost(str(err).splitlines()[0]) from None
        except RayActorError as err:  # the worker died for good (restarts used up, or ended above)
            self._end(key)
            raise WorkerLost(f"{key}: {_cause(err)}") from None
        if key in self.actors:
            self.urls[key] = result["server"]  # a restarted worker with its own ComfyUI has a new address
        return result

    def _end(self, key: str) -> None:
        handle = self.actors.pop(key, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)

    def progress(self) -> dict[str, dict]:
        asked = {self.actors[k].progress.remote(): k for k in self.actors}
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=0.2)
        answers = {}
        for ref in ready:
            try:
                answers[self.urls[asked[ref]]] = ray.get(ref, timeout=0)
            except (RayActorError, GetTimeoutError, ray.exceptions.RayTaskError):
                pass
        return answers

    def close(self) -> None:
        for key in list(self.actors):
            try:
                ray.get(self.actors[key].close.remote(), timeout=30)
            except Exception:  # a worker already gone has nothing to close
                pass
            self._end(key)
        if self.owns_ray:
            ray.shutdown()


def handle_key(url: str) -> str:
    url = url.rstrip("/")
    return url if "://" in url else "http://" + url


def _cause(err: Exception) -> str:
    text = str(getattr(err, "cause", None) or err)
    return text.strip().splitlines()[-1][:300] if text.strip() else type(err).__name__
