"""Where a batch's jobs run. Two pools with one interface (``submit`` a job to a worker, ``wait`` for any to
finish, ``result``): one server driven from this process (no Ray: threads, one per job in flight), and the
Ray pool (client/ray_pool.py) for several servers or a cluster."""

from __future__ import annotations

import concurrent.futures as futures

from .server import ServerDown
from .worker import ServerGone, ServerWorker


class WorkerLost(ConnectionError):
    """The worker, or the server it drives, is gone; the job did not finish there as far as anyone can tell."""


class LocalPool:
    """One ComfyUI server by URL, ``per_server`` jobs in flight, from this process."""

    def __init__(self, url: str, per_server: int = 2, patience: float = 300.0, poll_seconds: float = 1.0):
        self.capacity = per_server
        try:
            self.worker = ServerWorker(url, patience=patience, poll_seconds=poll_seconds)
        except ServerDown as err:
            raise ServerDown(f"no server answered: {err}") from None
        self.lost = False
        self.threads = futures.ThreadPoolExecutor(max_workers=per_server, thread_name_prefix="job")

    def keys(self) -> list[str]:
        return [] if self.lost else [self.worker.url]

    def server_of(self, key: str) -> str:
        return key

    def key_for_server(self, url: str | None) -> str | None:
        return url if url in self.keys() else None

    def object_infos(self) -> dict[str, dict]:
        return {self.worker.url: self.worker.object_info()}

    def submit(self, key: str, graph: dict, prompt_id: str, extra_data: dict) -> futures.Future:
        return self.threads.submit(self.worker.run_job, graph, prompt_id, extra_data)

    @staticmethod
    def wait(handles: list, timeout: float) -> list:
        return list(futures.wait(handles, timeout=timeout, return_when=futures.FIRST_COMPLETED).done) if handles else []

    def result(self, handle: futures.Future) -> dict:
        try:
            return handle.result()
        except ServerGone as err:
            self.lost = True
            raise WorkerLost(str(err)) from None

    def progress(self) -> dict[str, dict]:
        return {self.worker.url: self.worker.progress()}

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        self.worker.close()
