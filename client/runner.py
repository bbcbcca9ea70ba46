"""Runs a table of jobs over ComfyUI servers: validate every row first, then submit to the least busy
server, follow /ws (and /history as a fallback), download the outputs, retry failures on another
server and survive a server (or this client) dying mid-run without losing or repeating a job."""

from __future__ import annotations

import json
import os
import queue
import re
import time
import uuid

from .jobs import DONE, FAILED, PENDING, SUBMITTED, JobFile
from .overrides import OverrideError, apply_row
from .server import ComfyServer, PromptRejected, ServerDown
from .validate import check_graph

SEED_INPUTS = ("seed", "noise_seed")


class RowsRejected(ValueError):
    """Some rows are wrong; nothing was sent. ``report`` lists the problems per row."""

    def __init__(self, report: list[str]):
        super().__init__("\n".join(report))
        self.report = report


def build_jobs(workflow: dict, rows: list[dict], object_infos: dict[str, dict]) -> list[tuple[str, dict, dict]]:
    """[(job name, graph, row)] for every row, each checked against every server's /object_info.
    Raises RowsRejected with every problem of every row before anything is sent."""
    jobs, report, names = [], [], set()
    for index, row in enumerate(rows, start=1):
        where = f"row {index} (line {row.get('_line', index)})"
        name = str(row.get("job") or f"row-{index:04d}")
        problem = job_name_problem(name)
        if problem:
            report.append(f"{where}: job name {name[:80]!r} {problem}")
        if name in names:
            report.append(f"{where}: job name '{name}' is used twice")
        names.add(name)
        try:
            graph, applied = apply_row(workflow, row)
        except OverrideError as err:
            report.append(f"{where}: {err}")
            continue
        overridden = {(node_id, field) for _, node_id, field, _ in applied}
        for url, info in object_infos.items():
            report += [f"{where}: {problem}" + (f" [on {url}]" if len(object_infos) > 1 else "") for problem in check_graph(graph, info, overridden)]
        jobs.append((name, graph, row))
    if report:
        raise RowsRejected(report)
    return jobs


MAX_JOB_NAME = 120
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")


def job_name_problem(name: str) -> str | None:
    """Why a job name cannot be a file name in OUT/files (None when it can): it becomes one."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "has control characters"
    if "/" in name or "\\" in name:
        return "has a path separator (a job name is a file name in OUT/files, not a path)"
    if name.startswith("."):
        return "starts with '.' (a hidden file, or '..')"
    if len(name) > MAX_JOB_NAME:
        return f"is {len(name)} characters long (at most {MAX_JOB_NAME})"
    return None


def local_file(out_dir: str, job_name: str, index: int, server_file_name) -> str:
    """OUT/files/<job>_<index><ext>: the extension taken from the server's answer only when it is a
    plain one, and the result checked to stay inside OUT/files."""
    extension = os.path.splitext(str(server_file_name))[1]
    if not _EXTENSION.fullmatch(extension):
        raise ValueError(f"the server named an output file {str(server_file_name)[:80]!r}: not a plain file extension")
    folder = os.path.realpath(os.path.join(out_dir, "files"))
    path = os.path.realpath(os.path.join(folder, f"{job_name}_{index:02d}{extension}"))
    if os.path.dirname(path) != folder or job_name_problem(job_name):
        raise ValueError(f"job {job_name[:80]!r}: its file would leave {folder}")
    return path


def _seed(graph: dict):
    for node in graph.values():
        for name in SEED_INPUTS:
            value = node.get("inputs", {}).get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


class Runner:
    def __init__(self, workflow: dict, rows: list[dict], urls: list[str], out_dir: str, per_server: int = 2, retries: int = 2,
                 poll_seconds: float = 1.0, give_up_after: float = 300.0, on_change=None):
        self.events: queue.Queue = queue.Queue()
        self.servers = [ComfyServer(url, self.events) for url in urls]
        self.out_dir = out_dir
        self.per_server, self.retries, self.poll_seconds, self.give_up_after = per_server, retries, poll_seconds, give_up_after
        self.on_change = on_change or (lambda runner: None)
        self.alive: dict[ComfyServer, bool] = {}
        self.queue_lengths: dict[ComfyServer, int] = {}
        object_infos = {}
        for server in self.servers:
            try:
                object_infos[server.url] = server.object_info()
                self.alive[server] = True
            except ServerDown as err:
                self.alive[server] = False
                print(f"zimage-queue: {err} (left out: its /object_info could not be checked)", flush=True)
        if not object_infos:
            raise ServerDown("no server answered: " + ", ".join(urls))
        self.checked = set(object_infos)
        self.graphs = {}
        os.makedirs(os.path.join(out_dir, "files"), exist_ok=True)
        self.job_file = JobFile(os.path.join(out_dir, "jobs.json"))
        for name, graph, row in build_jobs(workflow, rows, object_infos):
            self.graphs[name] = graph
            self.job_file.merge(name, graph, row.get("_line"), _seed(graph))
        self.order = list(self.graphs)
        self.job_file.save()

    # --- bookkeeping ---
    def jobs(self, state: str | None = None) -> list[dict]:
        return [self.job_file.jobs[n] for n in self.order if state is None or self.job_file.jobs[n]["state"] == state]

    def server(self, url: str) -> ComfyServer | None:
        return next((s for s in self.servers if s.url == url), None)

    def _down(self, server: ComfyServer, why) -> None:
        if self.alive.get(server):
            print(f"\nzimage-queue: {server.url} is down ({why}); its running jobs go to another server", flush=True)
        self.alive[server] = False
        server.close()
        for job in self.jobs(SUBMITTED):
            if job["server"] == server.url:
                job["state"] = PENDING  # never finished there; tried[] steers it elsewhere
                job["tried"].append(server.url)
        self.job_file.save()
        self.revive_at = time.monotonic() + 2.0

    # --- the run ---
    def run(self) -> dict:
        self.revive_at = time.monotonic()
        for server in self.servers:
            if self.alive[server]:
                try:
                    server.listen()
                except ServerDown as err:
                    self._down(server, err)
        self._reconcile()
        stalled_since = None
        while self.jobs(PENDING) or self.jobs(SUBMITTED):
            if not any(self.alive.values()):
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > self.give_up_after:
                    print("\nzimage-queue: no server is reachable; run again to resume", flush=True)
                    break
            else:
                stalled_since = None
            self._revive()
            self._submit()
            self._wait_for_events()
            self._poll()
            self.on_change(self)
        for server in self.servers:
            server.close()
        self.on_change(self)
        return {state: len(self.jobs(state)) for state in (DONE, FAILED, PENDING, SUBMITTED)}

    def _reconcile(self) -> None:
        """Jobs a previous run left submitted: collect the finished, keep following the queued, and send
        again only those their server no longer knows."""
        for job in self.jobs(SUBMITTED):
            server = self.server(job["server"])
            if server is None or not self.alive.get(server):
                job["state"] = PENDING
                continue
            try:
                entry = server.history(job["prompt_id"])
                if entry is not None:
                    self._finish(job, server, entry)
                elif job["prompt_id"] not in server.queued_ids():
                    job["state"] = PENDING
            except ServerDown as err:
                self._down(server, err)
        self.job_file.save()

    def _revive(self) -> None:
        if time.monotonic() < self.revive_at:
            return
        self.revive_at = time.monotonic() + 5.0
        for server in self.servers:
            if not self.alive[server] and server.url in self.checked:  # never one whose /object_info was not checked
                try:
                    server.queue_length()
                    server.listen()
                    self.alive[server] = True
                    print(f"\nzimage-queue: {server.url} is back", flush=True)
                except ServerDown:
                    pass

    def _in_flight(self, server: ComfyServer) -> int:
        return sum(1 for job in self.jobs(SUBMITTED) if job["server"] == server.url)

    def _submit(self) -> None:
        for job in self.jobs(PENDING):
            open_servers = [s for s in self.servers if self.alive[s] and self._in_flight(s) < self.per_server]
            if not open_servers:
                return
            fresh = [s for s in open_servers if s.url not in job["tried"]] or open_servers
            for server in fresh:
                if server not in self.queue_lengths:
                    try:
                        self.queue_lengths[server] = server.queue_length()
                    except ServerDown as err:
                        self._down(server, err)
            fresh = [s for s in fresh if self.alive[s]]
            if not fresh:
                continue
            server = min(fresh, key=lambda s: (max(self.queue_lengths.get(s, 0), self._in_flight(s)), self.servers.index(s)))
            job.update(state=SUBMITTED, server=server.url, prompt_id=str(uuid.uuid4()), submitted=time.time())
            self.job_file.save()  # recorded before it is sent: a crash in between is found on the server by its id
            try:
                server.submit(self.graphs[job["job"]], job["prompt_id"], {"zimage_queue_job": job["job"]})
                self.queue_lengths[server] = self.queue_lengths.get(server, 0) + 1
            except PromptRejected as err:
                job.update(state=FAILED, error=f"rejected by {server.url}: {err}")
            except ServerDown as err:
                self._down(server, err)
            self.job_file.save()

    def _wait_for_events(self) -> None:
        deadline = time.monotonic() + self.poll_seconds
        while time.monotonic() < deadline:
            try:
                server, kind, data = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if kind == "closed":
                self._down(server, "its /ws connection closed")
            elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                self._check(server, data.get("prompt_id"))
            elif kind == "status":
                remaining = data.get("status", {}).get("exec_info", {}).get("queue_remaining")
                if isinstance(remaining, int):
                    self.queue_lengths[server] = remaining
            self.on_change(self)

    def _poll(self) -> None:
        """/history for every job in flight: the fallback when an event was missed."""
        for job in self.jobs(SUBMITTED):
            server = self.server(job["server"])
            if server is not None and self.alive[server]:
                self._check(server, job["prompt_id"])

    def _check(self, server: ComfyServer, prompt_id) -> None:
        job = next((j for j in self.jobs(SUBMITTED) if j.get("prompt_id") == prompt_id and j["server"] == server.url), None)
        if job is None:
            return
        try:
            entry = server.history(prompt_id)
            if entry is not None:
                self._finish(job, server, entry)
        except ServerDown as err:
            self._down(server, err)

    def _finish(self, job: dict, server: ComfyServer, entry: dict) -> None:
        status = entry.get("status", {})
        if status.get("status_str") == "error":
            message = next((m[1].get("exception_message", "") for m in status.get("messages", []) if m and m[0] == "execution_error"), "execution error")
            job["attempts"] += 1
            job["tried"].append(server.url)
            job.update(state=PENDING if job["attempts"] <= self.retries else FAILED, error=f"{server.url}: {message.strip()}")
            self.job_file.save()
            return
        files = []
        for node_id, output in sorted(entry.get("outputs", {}).items()):
            for image in output.get("images", []):
                if image.get("type", "output") != "output":
                    continue  # previews
                try:
                    path = local_file(self.out_dir, job["job"], len(files), image.get("filename"))
                except ValueError as err:  # nothing the server says may write outside OUT/files
                    job.update(state=FAILED, error=f"{server.url}: {err}")
                    self.job_file.save()
                    return
                data = server.view(image)
                with open(path, "wb") as handle:
                    handle.write(data)
                files.append(os.path.join("files", os.path.basename(path)))
        seconds = round(time.time() - job.get("submitted", time.time()), 3)
        job.update(state=DONE, files=files, seconds=seconds, done_on=server.url, done_at=time.time())
        self.job_file.save()
        self._write_results()

    def _write_results(self) -> None:
        """results.jsonl, one line per finished job in the order they finished: rewritten from the job
        file (atomically), so it can never hold a job twice or miss one the job file has as done."""
        done = sorted((j for j in self.job_file.jobs.values() if j["state"] == DONE), key=lambda j: j.get("done_at", 0))
        path = os.path.join(self.out_dir, "results.jsonl")
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            for job in done:
                handle.write(json.dumps({"job": job["job"], "files": job["files"], "seed": job.get("seed"), "server": job["done_on"],
                                         "seconds": job["seconds"], "prompt_id": job["prompt_id"]}) + "\n")
        os.replace(path + ".tmp", path)
