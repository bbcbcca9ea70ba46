"""``zimage-queue``: run an API workflow over a table of overrides on ComfyUI servers: one server from this
process, or several (and a cluster) on Ray."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from .pools import LocalPool, WorkerLost
from .runner import Runner, RowsRejected
from .server import ServerDown
from .store import DONE, FAILED, PENDING, SUBMITTED
from .table import TableError, read_table

EXAMPLES = """examples:
  zimage-queue z_image_turbo_text_to_image_api.json prompts.csv --server 127.0.0.1:8188 --out runs/fox
  zimage-queue wf_api.json jobs.jsonl --server gpu1:8188 --server gpu2:8188 --out runs/batch1   # Ray on this machine; run again to resume
  zimage-queue wf_api.json jobs.jsonl --comfyui /opt/ComfyUI --address auto --out runs/batch2  # a ComfyUI per GPU of a Ray cluster

table columns: job, prompt, negative, seed, width, height, steps, cfg, lora_strength, batch_size,
or <node id | node title | class name>.<input name> (e.g. 6.denoise, "Prompt.text", ZImageLoraLoader.strength)"""


class ProgressBar:
    """Jobs done and failed, and each server's jobs in flight with the running one's step from /ws: redrawn
    twice a second on a terminal, a line every ``every`` seconds (default 10) otherwise."""

    def __init__(self, stream=sys.stderr, width: int = 30, every: float | None = None):
        self.stream, self.width, self.last = stream, width, 0.0
        self.interactive = stream.isatty()
        self.every = every if every is not None else (0.5 if self.interactive else 10.0)

    def __call__(self, runner: Runner) -> None:
        now = time.monotonic()
        if now - self.last < self.every and runner.in_flight:  # with nothing in flight (the end) it is always drawn
            return
        self.last = now
        counts = runner.counts()
        total, done, failed = sum(counts.values()), counts[DONE], counts[FAILED]
        filled = int(self.width * (done + failed) / max(1, total))
        servers = []
        progress = runner.pool.progress()
        for key in runner.pool.keys():
            url = runner.pool.server_of(key)
            running = [name for name, k in runner.in_flight.values() if k == key]
            steps = progress.get(url, {})
            step = next((f" {v}/{m}" for name in running for v, m in [steps.get(runner.records[name]["prompt_id"], (0, 0))] if m), "")
            servers.append(f"{url}: {len(running)} in flight{step}")
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} done, {failed} failed | " + " | ".join(servers)
        self.stream.write(("\r" + line[:200].ljust(200)) if self.interactive else line + "\n")
        self.stream.flush()


def _at_least(lowest, kind=int):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{text} is below {lowest}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zimage-queue", description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", help="an API-format workflow (.json; ComfyUI's 'Export (API)')")
    parser.add_argument("table", help="overrides, one job per row: .csv with a header, or .jsonl")
    where = parser.add_argument_group("servers (one --server runs from this process; anything more runs on Ray)")
    where.add_argument("--server", action="append", default=[], help="a running ComfyUI server (host:port or URL); repeat for several")
    where.add_argument("--comfyui", metavar="DIR", help="start a ComfyUI from DIR (this pack in its custom_nodes) for each worker, on the GPU Ray gives it")
    where.add_argument("--workers", type=_at_least(1), help="with --comfyui: how many servers to start (default: one per GPU in the Ray cluster)")
    where.add_argument("--comfyui-python", help="with --comfyui: the Python that runs ComfyUI (default: this one)")
    where.add_argument("--comfyui-args", default="", help="with --comfyui: more arguments for ComfyUI's main.py, e.g. \"--lowvram\"")
    where.add_argument("--gpus-per-server", type=_at_least(0, float), default=1.0, help="with --comfyui: GPUs Ray gives each started ComfyUI (default 1; 0 on CPU machines)")
    where.add_argument("--address", help="the Ray cluster to join ('auto' on a cluster node, ray://head:10001); default: Ray on this machine")
    where.add_argument("--ray", action="store_true", help="run on Ray even with one --server")
    parser.add_argument("--out", required=True, help="output folder: files/, results.jsonl and the job store jobs.sqlite (rerun to resume)")
    parser.add_argument("--db", help="the job store as an SQLAlchemy URL (e.g. postgresql://host/zimage) instead of OUT/jobs.sqlite")
    parser.add_argument("--batch-name", help="this batch's name in the job store (default: the --out folder's absolute path)")
    parser.add_argument("--per-server", type=_at_least(1), default=2, help="jobs in flight per server at a time (default 2)")
    parser.add_argument("--retries", type=_at_least(0), default=2, help="how often a job ComfyUI failed is tried again, on another server when there is one")
    parser.add_argument("--give-up-after", type=_at_least(1, float), default=300.0,
                        help="seconds a server may not answer before its worker gives up (its jobs go to the others; with one server the run stops)")
    args = parser.parse_args(argv)
    if not args.server and not args.comfyui:
        parser.error("give at least one --server, or --comfyui DIR")
    on_ray = bool(args.comfyui or args.address or args.ray or len(args.server) > 1)
    pool = None
    try:
        with open(args.workflow, encoding="utf-8") as handle:
            workflow = json.load(handle)
        if "nodes" in workflow and "links" in workflow:
            print(f"{args.workflow} is a UI workflow; export it with 'Export (API)' (or use the *_api.json file)", file=sys.stderr)
            return 2
        rows = read_table(args.table)
        if on_ray:
            try:
                from .ray_pool import RayPool
            except ImportError:
                print("several servers, --comfyui and --address run on Ray: pip install \"comfyui-zimage[cluster]\" (one --server needs nothing more)",
                      file=sys.stderr)
                return 2
            pool = RayPool(args.server, args.comfyui, args.workers, args.comfyui_python, tuple(shlex.split(args.comfyui_args)), args.gpus_per_server,
                           args.per_server, args.give_up_after, address=args.address)
        else:
            pool = LocalPool(args.server[0], args.per_server, args.give_up_after)
        runner = Runner(workflow, rows, pool, args.out, args.retries, store_url=args.db, batch_name=args.batch_name, on_change=ProgressBar())
    except RowsRejected as err:
        pool.close()
        print(f"{len(err.report)} problem(s); nothing was sent:", file=sys.stderr)
        for line in err.report:
            print("  " + line, file=sys.stderr)
        return 2
    except (OSError, ValueError, TableError, ServerDown, WorkerLost) as err:
        if pool is not None:
            pool.close()
        print(f"zimage-queue: {err}", file=sys.stderr)
        return 2
    try:
        counts = runner.run()
    finally:
        pool.close()
    print(f"\ndone {counts[DONE]}, failed {counts[FAILED]}, left {counts[PENDING] + counts[SUBMITTED]}; results in {args.out}/results.jsonl", file=sys.stderr)
    for job in runner.jobs(FAILED):
        print(f"  failed {job['job']}: {job.get('error', '')}", file=sys.stderr)
    return 0 if counts[FAILED] == 0 and counts[PENDING] + counts[SUBMITTED] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
