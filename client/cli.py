"""``zimage-queue``: run an API workflow over a table of overrides on one or more ComfyUI servers."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .jobs import DONE, FAILED, PENDING, SUBMITTED
from .runner import Runner, RowsRejected
from .server import ServerDown
from .table import TableError, read_table

EXAMPLES = """examples:
  zimage-queue z_image_turbo_text_to_image_api.json prompts.csv --server 127.0.0.1:8188 --out runs/fox
  zimage-queue wf_api.json jobs.jsonl --server gpu1:8188 --server gpu2:8188 --out runs/batch1   # run again to resume

table columns: job, prompt, negative, seed, width, height, steps, cfg, lora_strength, batch_size,
or <node id | node title | class name>.<input name> (e.g. 6.denoise, "Prompt.text", ZImageLoraLoader.strength)"""


class ProgressBar:
    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width, self.last = stream, width, 0.0
        self.interactive = stream.isatty()

    def __call__(self, runner: Runner) -> None:
        now = time.monotonic()
        if now - self.last < (0.2 if self.interactive else 10.0):
            return
        self.last = now
        jobs = runner.jobs()
        done, failed = len(runner.jobs(DONE)), len(runner.jobs(FAILED))
        filled = int(self.width * (done + failed) / max(1, len(jobs)))
        servers = []
        for server in runner.servers:
            if not runner.alive[server]:
                servers.append(f"{server.url}: down")
                continue
            running = [j for j in runner.jobs(SUBMITTED) if j["server"] == server.url]
            step = next((f" {v}/{m}" for j in running for v, m in [server.progress.get(j["prompt_id"], (0, 0))] if m), "")
            servers.append(f"{server.url}: {len(running)} in flight{step}")
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{len(jobs)} done, {failed} failed | " + " | ".join(servers)
        self.stream.write(("\r" + line[:200].ljust(200)) if self.interactive else line + "\n")
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zimage-queue", description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", help="an API-format workflow (.json; ComfyUI's 'Export (API)')")
    parser.add_argument("table", help="overrides, one job per row: .csv with a header, or .jsonl")
    parser.add_argument("--server", action="append", required=True, help="a ComfyUI server (host:port or URL); repeat for several")
    parser.add_argument("--out", required=True, help="output folder: files/, results.jsonl and the job file jobs.json (rerun to resume)")
    parser.add_argument("--per-server", type=int, default=2, help="jobs queued on one server at a time (default 2)")
    parser.add_argument("--retries", type=int, default=2, help="how often a failed job is tried again, on another server when there is one")
    parser.add_argument("--give-up-after", type=float, default=300.0, help="seconds with no server reachable before stopping (the job file keeps the rest)")
    args = parser.parse_args(argv)
    try:
        with open(args.workflow, encoding="utf-8") as handle:
            workflow = json.load(handle)
        if "nodes" in workflow and "links" in workflow:
            print(f"{args.workflow} is a UI workflow; export it with 'Export (API)' (or use the *_api.json file)", file=sys.stderr)
            return 2
        rows = read_table(args.table)
        runner = Runner(workflow, rows, args.server, args.out, args.per_server, args.retries, give_up_after=args.give_up_after, on_change=ProgressBar())
    except RowsRejected as err:
        print(f"{len(err.report)} problem(s); nothing was sent:", file=sys.stderr)
        for line in err.report:
            print("  " + line, file=sys.stderr)
        return 2
    except (OSError, ValueError, TableError, ServerDown) as err:
        print(f"zimage-queue: {err}", file=sys.stderr)
        return 2
    counts = runner.run()
    print(f"\ndone {counts[DONE]}, failed {counts[FAILED]}, left {counts[PENDING] + counts[SUBMITTED]}; results in {args.out}/results.jsonl", file=sys.stderr)
    for job in runner.jobs(FAILED):
        print(f"  failed {job['job']}: {job.get('error', '')}", file=sys.stderr)
    return 0 if counts[FAILED] == 0 and counts[PENDING] + counts[SUBMITTED] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
