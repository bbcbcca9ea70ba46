"""zimage-queue's costs, measured side by side in one run (issue 21):

1. per-job overhead of the Ray path (the Runner on a one-worker Ray pool: the job store, files,
   results.jsonl, an actor call) over direct HTTP to the same server (client/worker.py's run_job in a loop:
   POST /prompt, /ws, /history, /view), on one ComfyUI server: the real ComfyUI when one is found (CPU,
   `EmptyImage → ImageBlur → SaveImage`, ComfyUI's own nodes: the client's cost does not depend on the
   model), the pack's test server otherwise. Goal: ≤ 5 % of a job.
2. the job store's cost per state change at 1,000, 10,000 and 100,000 rows: SQLite (one transaction on
   one row) against the JSON job file the client used before (rewritten whole per change). Goal: flat
   in the row count (100,000 rows ≤ 2× the cost at 1,000).

    python bench/queue_batch.py [--jobs 16] [--fake]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfyui_harness import ComfyServer, comfyui_python, find_comfyui  # noqa: E402

BLUR = {"1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 4.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}}}


def start_server(work: Path, fake: bool):
    if not fake and find_comfyui() and comfyui_python():
        comfy = ComfyServer(find_comfyui(), comfyui_python(), work)
        comfy.start()
        return comfy.url, comfy.stop, "the real ComfyUI (CPU), EmptyImage → ImageBlur(31) → SaveImage at 512²", BLUR, "EmptyImage.color"
    import subprocess

    from zimage_pack.workflows.build import OBJECT_INFO_PATH

    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_comfy_server.py"), "--object-info", OBJECT_INFO_PATH, "--log", str(work / "runs.jsonl"),
                             "--seconds", "0.5", "--output-dir", str(work / "output")], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().split()[-1])
    workflow = json.loads((ROOT / "example_workflows" / "api" / "z_image_turbo_text_to_image_api.json").read_text())
    return f"http://127.0.0.1:{port}", proc.kill, "the pack's ComfyUI-API test server, 0.5 s jobs", workflow, "seed"


def job_overhead(work: Path, jobs: int, fake: bool) -> None:
    import ray

    from zimage_pack.client.ray_pool import RayPool
    from zimage_pack.client.runner import Runner
    from zimage_pack.client.overrides import apply_row
    from zimage_pack.client.worker import ServerWorker

    url, stop, what, workflow, column = start_server(work / "server", fake)
    os.environ["RAY_TMPDIR"] = str(work / "ray")
    os.makedirs(os.environ["RAY_TMPDIR"])
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    try:
        direct = ServerWorker(url, poll_seconds=1.0)
        pool = RayPool([url], per_server=1, poll_seconds=1.0)
        counter = iter(range(1, 10**6))

        def direct_block() -> float:
            started = time.perf_counter()
            for _ in range(jobs):
                graph, _ = apply_row(workflow, {column: next(counter)})
                direct.run_job(graph, str(uuid.uuid4()))
            return (time.perf_counter() - started) / jobs

        def ray_block(index: int) -> float:
            rows = [{column: next(counter), "job": f"b{index}-{i}"} for i in range(jobs)]
            runner = Runner(workflow, rows, pool, str(work / f"out{index}"))
            started = time.perf_counter()
            runner.run()
            return (time.perf_counter() - started) / jobs

        direct_block()  # warm: the server's first run loads and caches
        ray_block(0)
        direct_times, ray_times = [], []
        for index in range(1, 4):  # interleaved blocks: the machine's noise hits both sides alike
            direct_times.append(direct_block())
            ray_times.append(ray_block(index))
        d, r = statistics.median(direct_times), statistics.median(ray_times)
        print(f"server: {what}; {jobs} jobs per block, 3 blocks each, interleaved, one job in flight")
        print(f"  direct HTTP (run_job in a loop):   {d * 1000:8.1f} ms per job")
        print(f"  Ray path (Runner, store, files):   {r * 1000:8.1f} ms per job")
        print(f"  overhead: {100 * (r - d) / d:+.1f} % of a job   (goal: ≤ 5 %)")
        direct.close()
        pool.close()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop()


def store_cost(work: Path) -> None:
    from zimage_pack.client.store import JobStore

    def json_file_update(path: str, jobs: dict, name: str) -> None:  # the job file before the store: rewritten whole, fsynced
        jobs[name]["state"] = "submitted"
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump({"jobs": jobs}, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(path + ".tmp", path)

    graph = json.loads((ROOT / "example_workflows" / "api" / "z_image_turbo_text_to_image_api.json").read_text())
    print("state store: seconds per state change (median), same machine, same run")
    print(f"  {'rows':>8}  {'SQLite':>10}  {'JSON file':>10}")
    figures = {}
    for rows in (1_000, 10_000, 100_000):
        folder = work / f"store{rows}"
        folder.mkdir()
        store = JobStore("sqlite:///" + str(folder / "jobs.sqlite"), "bench")
        store.merge([(f"job{i:06d}", {**graph, "seed": i}, i + 2, i) for i in range(rows)])
        sqlite_times = []
        for i in range(200):
            started = time.perf_counter()
            store.update(f"job{(i * 7919) % rows:06d}", state="submitted", prompt_id=str(uuid.uuid4()), server="http://gpu1:8188")
            sqlite_times.append(time.perf_counter() - started)
        store.close()
        jobs = {f"job{i:06d}": {"job": f"job{i:06d}", "line": i + 2, "graph": "0123456789abcdef", "seed": i, "state": "pending", "attempts": 0, "tried": []}
                for i in range(rows)}
        json_times = []
        for i in range(20 if rows < 100_000 else 5):
            started = time.perf_counter()
            json_file_update(str(folder / "jobs.json"), jobs, f"job{(i * 7919) % rows:06d}")
            json_times.append(time.perf_counter() - started)
        figures[rows] = statistics.median(sqlite_times)
        print(f"  {rows:>8}  {figures[rows]:10.5f}  {statistics.median(json_times):10.5f}")
        shutil.rmtree(folder)
    print(f"  SQLite at 100,000 rows / at 1,000: {figures[100_000] / figures[1_000]:.2f}×   (goal: flat, ≤ 2×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--fake", action="store_true", help="the pack's test server even when a ComfyUI is found")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zimage-bench-queue-"))
    try:
        store_cost(work)
        job_overhead(work, args.jobs, args.fake)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
