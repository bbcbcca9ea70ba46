"""Runs a table of jobs on a pool of workers (client/pools.py: one server from this process, or Ray):
every row checked against each server's /object_info before anything is sent, each job's prompt id
picked and recorded in the job store before it is sent, its pictures written to OUT/files and a line to
OUT/results.jsonl. A rerun collects what finished, follows what is still queued and sends only what no
server has, so no job is lost or run twice when a server, a worker or this client dies."""

from __future__ import annotations

import collections
import json
import os
import re
import time
import uuid

from .overrides import OverrideError, apply_row
from .pools import WorkerLost
from .store import DONE, FAILED, PENDING, STATES, SUBMITTED, JobStore, default_url
from .validate import check_graph
from .worker import JobError

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
    def __init__(self, workflow: dict, rows: list[dict], pool, out_dir: str, retries: int = 2, store_url: str | None = None,
                 batch_name: str | None = None, on_change=None, wait_seconds: float = 0.5):
        self.pool, self.out_dir, self.retries, self.wait_seconds = pool, out_dir, retries, wait_seconds
        self.on_change = on_change or (lambda runner: None)
        object_infos = pool.object_infos()
        if not object_infos:
            raise WorkerLost("no server answered /object_info")
        jobs = build_jobs(workflow, rows, object_infos)  # RowsRejected: nothing was sent
        os.makedirs(os.path.join(out_dir, "files"), exist_ok=True)
        url = store_url or default_url(out_dir)
        self.store = JobStore(url, batch_name or os.path.abspath(out_dir))
        legacy = os.path.join(out_dir, "jobs.json")
        if store_url is None and os.path.exists(legacy) and not self.store.jobs():
            self.store.import_job_file(legacy)  # an output folder of the client before the job store
            os.replace(legacy, legacy + ".imported")
        self.graphs = {name: graph for name, graph, _ in jobs}
        self.store.merge([(name, graph, row.get("_line"), _seed(graph)) for name, graph, row in jobs])
        self.order = list(self.graphs)
        self.records = {job["job"]: job for job in self.store.jobs(self.order)}  # this run's view; the store has the truth
        self.in_flight: dict = {}  # pool handle → (job name, worker key)
        _rewrite_results(out_dir, [j for j in self.records.values() if j["state"] == DONE])

    # --- bookkeeping ---
    def jobs(self, state: str | None = None) -> list[dict]:
        return [self.records[n] for n in self.order if state is None or self.records[n]["state"] == state]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for job in self.records.values():
            counts[job["state"]] += 1
        return counts

    def _set(self, name: str, **fields) -> None:
        """One transaction on the job's row first, then this run's view."""
        self.store.update(name, **fields)
        self.records[name].update(fields)

    # --- the run ---
    def run(self) -> dict:
        follow_ups: dict[str, str] = {}  # job → worker key: sent by an earlier run, its server is here again
        for job in self.jobs(SUBMITTED):
            key = self.pool.key_for_server(job["server"])
            if key is not None:
                follow_ups[job["job"]] = key
            else:
                self._set(job["job"], state=PENDING)  # its server is not in this run (or was started by the last one)
        pending = collections.deque(j["job"] for j in self.jobs(PENDING))
        try:
            while True:
                self._dispatch(follow_ups, pending)
                if not self.in_flight:
                    if pending and not self.pool.keys():
                        print("\nzimage-queue: no worker is left; run again to resume", flush=True)
                    break
                for handle in self.pool.wait(list(self.in_flight), self.wait_seconds):
                    self._settle(handle, pending)
                self.on_change(self)
        finally:
            self.store.close()  # the pool is its creator's to close
        self.on_change(self)
        return self.counts()

    def _dispatch(self, follow_ups: dict, pending: collections.deque) -> None:
        for key in self.pool.keys():
            room = self.pool.capacity - sum(1 for _, k in self.in_flight.values() if k == key)
            for name in [n for n, k in follow_ups.items() if k == key][:max(0, room)]:
                del follow_ups[name]  # same prompt id: the worker collects or follows it, and sends it only if its server lost it
                self._send(name, key, self.records[name]["prompt_id"])
                room -= 1
            url = self.pool.server_of(key)
            while room > 0 and pending:
                name = self._next_for(url, pending)
                if name is None:
                    break
                pending.remove(name)
                self._send(name, key, str(uuid.uuid4()))
                room -= 1
        for name in [n for n, k in follow_ups.items() if k not in self.pool.keys()]:
            del follow_ups[name]
            self._set(name, state=PENDING)
            pending.appendleft(name)

    def _next_for(self, url: str, pending: collections.deque) -> str | None:
        """The first pending job not yet tried on ``url``; one that was waits for another server, unless
        it has been tried on every server there is."""
        servers = {self.pool.server_of(k) for k in self.pool.keys()}
        return next((n for n in pending if url not in self.records[n]["tried"] or servers <= set(self.records[n]["tried"])), None)

    def _send(self, name: str, key: str, prompt_id: str) -> None:
        # recorded before it is sent: if this client dies in between, a rerun finds it on the server by its id
        self._set(name, state=SUBMITTED, server=self.pool.server_of(key), prompt_id=prompt_id, submitted=time.time())
        handle = self.pool.submit(key, self.graphs[name], prompt_id, {"zimage_queue_job": name})
        self.in_flight[handle] = (name, key)

    def _settle(self, handle, pending: collections.deque) -> None:
        name, key = self.in_flight.pop(handle)
        job = self.records[name]
        try:
            result = self.pool.result(handle)
        except JobError as err:
            message = str(getattr(err, "cause", None) or err).strip()
            attempts = job["attempts"] + 1
            state = PENDING if attempts <= self.retries else FAILED
            self._set(name, state=state, attempts=attempts, tried=job["tried"] + [job["server"]], error=message)
            if state == PENDING:
                pending.append(name)
            return
        except WorkerLost as err:
            print(f"\nzimage-queue: {err}; its jobs go to the other workers", flush=True)
            if self.pool.keys():
                self._set(name, state=PENDING, tried=job["tried"] + [job["server"]])
                pending.appendleft(name)
            # with no worker left it stays submitted: a rerun asks its server for it before sending it again
            return
        files = []
        try:
            paths = [local_file(self.out_dir, name, index, server_name) for index, (server_name, _) in enumerate(result["outputs"])]
        except ValueError as err:  # nothing a server says may write outside OUT/files
            self._set(name, state=FAILED, error=f"{result['server']}: {err}")
            return
        for path, (_, data) in zip(paths, result["outputs"]):
            with open(path, "wb") as handle_out:
                handle_out.write(data)
            files.append(os.path.join("files", os.path.basename(path)))
        self._set(name, state=DONE, files=files, seconds=result["seconds"], server=result["server"], done_at=time.time(), error=None)
        _append_result(self.out_dir, self.records[name])


def _result_line(job: dict) -> str:
    return json.dumps({"job": job["job"], "files": job["files"], "seed": job.get("seed"), "server": job["server"],
                       "seconds": job["seconds"], "prompt_id": job["prompt_id"]}) + "\n"


def _rewrite_results(out_dir: str, done: list[dict]) -> None:
    """results.jsonl from the job store, once per run (atomically): one line per finished job, in the
    order they finished; during the run each finished job appends its line after the store has it."""
    path = os.path.join(out_dir, "results.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.writelines(_result_line(job) for job in sorted(done, key=lambda j: j.get("done_at") or 0))
    os.replace(path + ".tmp", path)


def _append_result(out_dir: str, job: dict) -> None:
    with open(os.path.join(out_dir, "results.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(_result_line(job))
