"""The job file: every job's state, written (atomically) before each change takes effect on a server,
so a rerun resumes exactly where the last run stopped."""

from __future__ import annotations

import hashlib
import json
import os

PENDING, SUBMITTED, DONE, FAILED = "pending", "submitted", "done", "failed"


def graph_hash(graph: dict) -> str:
    return hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()[:16]


class JobFile:
    def __init__(self, path: str):
        self.path = path
        self.jobs: dict[str, dict] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                self.jobs = json.load(handle).get("jobs", {})

    def merge(self, job: str, graph: dict, line, seed) -> dict:
        """The job's record: kept from the last run if its graph is the same, else a new pending one."""
        digest = graph_hash(graph)
        old = self.jobs.get(job)
        if old is None or old.get("graph") != digest:
            self.jobs[job] = {"job": job, "line": line, "graph": digest, "seed": seed, "state": PENDING, "attempts": 0, "tried": []}
        return self.jobs[job]

    def save(self) -> None:
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"jobs": self.jobs}, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
