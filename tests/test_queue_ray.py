"""zimage-queue on Ray: a local Ray cluster (a head and two worker nodes, ray.cluster_utils.Cluster) and two
ComfyUI servers: the real ComfyUI when the suite finds one (tests/comfyui_harness.py: main.py --cpu on
loopback, running a graph of ComfyUI's own nodes that takes a moment and saves a picture), the pack's
ComfyUI-API test server (tests/fake_comfy_server.py) otherwise. Executions are counted in the servers' own
records (the real server's output folder, the test server's log), never in the client's.

- 24 jobs: one server killed (SIGKILL) mid-run, then the Ray node under the other server's worker removed
  mid-run: every job delivered once; no job ran twice on the surviving server (Ray restarted its worker on
  the other node and retried its calls, which collected what the server had already run); a job runs a
  second time only when its first run finished on the killed server and died there with its pictures;
- the client killed with jobs in flight and run again: no job twice, and a third run sends nothing;
- workers that start their own ComfyUI (--comfyui): one ComfyUI killed mid-run, Ray restarts its worker with
  a fresh ComfyUI and retries its calls: every job delivered once;
- a bad table is refused by row with nothing sent; a job ComfyUI failed goes to the other server."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import ray  # the test extra has it
from ray.cluster_utils import Cluster

from comfyui_harness import ComfyServer, comfyui_python, find_comfyui
from zimage_pack.client.cli import ProgressBar
from zimage_pack.client.ray_pool import RayPool
from zimage_pack.client.runner import Runner
from zimage_pack.client.store import JobStore, default_url

HERE = Path(__file__).resolve().parent
FAKE_WORKFLOW = HERE.parent / "example_workflows" / "api" / "z_image_turbo_text_to_image_api.json"
WORKER = {"resources": {"zimage_worker": 1}}  # workers only on the two worker nodes, never on the head
REAL = find_comfyui() is not None and comfyui_python() is not None
if os.environ.get("ZIMAGE_REQUIRE_COMFYUI") == "1" and not REAL:
    raise RuntimeError("ZIMAGE_REQUIRE_COMFYUI=1 but no ComfyUI (or its Python environment) was found for the Ray tests")

# ComfyUI's own nodes, no model: a blur that takes a moment on the CPU, then a saved picture named after the job
BLUR_WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 640, "height": 640, "batch_size": 1, "color": 0}},
                 "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 4.0}},
                 "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "job"}}}


def executions_in(folder: Path, real: bool = REAL) -> list[str]:
    """The jobs a server ran to the end, by its own records in ``folder``: the real ComfyUI's SaveImage
    files (<job>_<counter>_.png, one per execution), the test server's log (runs.jsonl)."""
    if real:
        return sorted(name.rsplit("_", 2)[0] for name in os.listdir(folder) if name.endswith("_.png")) if folder.exists() else []
    log = folder / "runs.jsonl"
    return sorted(e["job"] for e in map(json.loads, log.read_text().splitlines()) if e["ok"]) if log.exists() else []


class Server:
    """A ComfyUI server the test can kill, with the jobs it ran to the end by its own records."""

    def __init__(self, work: Path, fail_seed: int | None = None, real: bool = REAL):
        self.work, self.real = work, real
        work.mkdir(parents=True, exist_ok=True)
        if real:
            self.comfy = ComfyServer(find_comfyui(), comfyui_python(), work, memory_limit=6 * 2**30)
            self.comfy.start()
            self.url, self.proc = self.comfy.url, self.comfy.proc
        else:
            from zimage_pack.workflows.build import OBJECT_INFO_PATH

            command = [sys.executable, str(HERE / "fake_comfy_server.py"), "--object-info", OBJECT_INFO_PATH, "--log", str(work / "runs.jsonl"),
                       "--seconds", "0.4", "--output-dir", str(work / "output")]
            (work / "output").mkdir(exist_ok=True)
            self.proc = subprocess.Popen(command + (["--fail-seed", str(fail_seed)] if fail_seed is not None else []), stdout=subprocess.PIPE,
                                         text=True, start_new_session=True)
            line = self.proc.stdout.readline()
            assert line.startswith("listening on "), f"the test server did not start: {line!r}"
            self.url = f"http://127.0.0.1:{int(line.split()[-1])}"

    def executions(self) -> list[str]:
        return executions_in(self.comfy.home / "output" if self.real else self.work, self.real)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        if self.real:
            self.comfy.log.close()


def start_servers(tmp_path: Path, count: int, **kwargs) -> list[Server]:
    with ThreadPoolExecutor(count) as starting:
        return list(starting.map(lambda i: Server(tmp_path / f"server{i}", **kwargs), range(count)))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Ray's session folders in the test's temporary folder, not /tmp/ray (short: its socket paths must stay under 108 bytes)
    os.environ["RAY_TMPDIR"] = str(tmp_path_factory.mktemp("ray"))
    small = dict(num_cpus=1, object_store_memory=80 * 2**20)
    head = Cluster(initialize_head=True, head_node_args=dict(small, include_dashboard=False))
    nodes = [head.add_node(**small, resources={"zimage_worker": 8}) for _ in range(2)]
    ray.init(address=head.address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    head.worker_nodes_list = nodes
    yield head
    ray.shutdown()
    head.shutdown()
    del os.environ["RAY_TMPDIR"]


def workflow_and_rows(count: int, prefix: str = "j") -> tuple[dict, list[dict]]:
    names = [f"{prefix}{i:02d}" for i in range(count)]
    if REAL:
        return BLUR_WORKFLOW, [{"job": n, "EmptyImage.color": 1000 + i, "SaveImage.filename_prefix": n, "_line": i + 2} for i, n in enumerate(names)]
    return json.loads(FAKE_WORKFLOW.read_text()), [{"job": n, "seed": 1000 + i, "_line": i + 2} for i, n in enumerate(names)]


def write_table(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "_line"}) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def wait_until(condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_killed_server_and_a_removed_ray_node_lose_nothing_and_repeat_nothing(cluster, tmp_path):
    servers = start_servers(tmp_path, 2)
    try:
        workflow, rows = workflow_and_rows(24)
        out = tmp_path / "out"
        pool = RayPool([s.url for s in servers], per_server=2, patience=3.0, poll_seconds=0.5, actor_options=WORKER)
        runner = Runner(workflow, rows, pool, str(out))
        survivor_key = next(k for k in pool.keys() if pool.server_of(k) == servers[1].url)
        survivor_node = pool.node_of(survivor_key)
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(runner.run()))
        thread.start()
        wait_until(lambda: len(servers[0].executions()) >= 2, what="two jobs on the first server")
        servers[0].kill()  # mid-run: jobs running and queued there
        seen = len(servers[1].executions())
        wait_until(lambda: len(servers[1].executions()) >= seen + 3, what="three more jobs on the second server")
        node = next(n for n in cluster.worker_nodes_list if n.node_id == survivor_node)
        in_flight_at_removal = [name for name, key in list(runner.in_flight.values()) if key == survivor_key]
        cluster.remove_node(node)  # the survivor's worker dies with its node, with calls in flight
        cluster.worker_nodes_list = [n for n in cluster.worker_nodes_list if n is not node]
        cluster.worker_nodes_list.append(cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20, resources={"zimage_worker": 8}))
        thread.join(timeout=300)
        assert not thread.is_alive(), "the batch did not finish"
        names = sorted(r["job"] for r in rows)
        assert outcome["done"] == 24 and outcome["failed"] == 0, outcome
        delivered = results(out)
        assert sorted(r["job"] for r in delivered) == names  # each job delivered exactly once
        on_killed, on_survivor = servers[0].executions(), servers[1].executions()
        assert len(on_survivor) == len(set(on_survivor)), f"a job ran twice on the surviving server: {on_survivor}"
        assert sorted(set(on_killed) | set(on_survivor)) == names
        survivor_url = servers[1].url
        assert in_flight_at_removal, "nothing was in flight on the surviving server's worker when its node went"
        moved = [j["job"] for j in JobStore(default_url(str(out)), os.path.abspath(out)).jobs() if servers[0].url in j["tried"]]
        assert moved, "no job was in flight on the killed server"  # its jobs went to the survivor
        for job in set(on_killed) & set(on_survivor):  # ran again only when its run on the killed server was never collected
            assert next(r["server"] for r in delivered if r["job"] == job) == survivor_url, job
        for r in delivered:
            assert (out / r["files"][0]).stat().st_size > 0
        assert pool.node_of(survivor_key) != survivor_node  # Ray restarted the worker on the other node
        pool.close()
    finally:
        for server in servers:
            server.stop()


def test_a_killed_client_rerun_sends_exactly_the_missing_jobs_and_a_third_run_nothing(cluster, tmp_path):
    servers = start_servers(tmp_path, 2)
    try:
        workflow, rows = workflow_and_rows(24, prefix="k")
        (tmp_path / "workflow.json").write_text(json.dumps(workflow))
        out = tmp_path / "out"
        command = [sys.executable, "-m", "zimage_pack.client.cli", str(tmp_path / "workflow.json"), write_table(tmp_path / "jobs.jsonl", rows),
                   "--server", servers[0].url, "--server", servers[1].url, "--address", cluster.address, "--out", str(out), "--per-server", "3"]
        client = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_until(lambda: (out / "results.jsonl").exists() and len((out / "results.jsonl").read_text().splitlines()) >= 4, what="four results")
        client.send_signal(signal.SIGKILL)  # with jobs submitted and not collected
        client.wait()
        before = len(results(out))
        assert 4 <= before < 24
        assert subprocess.run(command, capture_output=True, timeout=300).returncode == 0
        names = sorted(r["job"] for r in rows)
        assert sorted(r["job"] for r in results(out)) == names
        executions = servers[0].executions() + servers[1].executions()
        assert sorted(executions) == names  # the jobs in flight at the kill were collected, not sent again
        third = subprocess.run(command, capture_output=True, timeout=300)
        assert third.returncode == 0 and sorted(servers[0].executions() + servers[1].executions()) == names
    finally:
        for server in servers:
            server.stop()


def test_a_bad_table_is_refused_by_row_with_nothing_sent(cluster, tmp_path, capsys):
    from zimage_pack.client.cli import main as queue_main

    servers = start_servers(tmp_path, 2)
    try:
        workflow, rows = workflow_and_rows(3)
        (tmp_path / "workflow.json").write_text(json.dumps(workflow))
        bad = [dict(rows[0]), dict(rows[1], job="../../elsewhere/x"), dict(rows[2], **{"99.text": "no such node"})]
        code = queue_main([str(tmp_path / "workflow.json"), write_table(tmp_path / "jobs.jsonl", bad), "--server", servers[0].url,
                           "--server", servers[1].url, "--address", cluster.address, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and "nothing was sent" in err, err
        assert "row 2 (line 2)" in err and "has a path separator" in err and "row 3 (line 3)" in err and "no node '99'" in err, err
        time.sleep(1.0)
        assert servers[0].executions() == servers[1].executions() == []
        assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "out" / "jobs.sqlite").exists()
    finally:
        for server in servers:
            server.stop()


def test_a_job_comfyui_failed_goes_to_the_other_server(cluster, tmp_path):
    """The pack's test server fails one seed on one server only (a real ComfyUI cannot be made to fail
    a valid job on one server and not the other)."""
    servers = [Server(tmp_path / "failing", fail_seed=13, real=False), Server(tmp_path / "fine", real=False)]
    try:
        rows = [{"job": "unlucky", "seed": 13, "_line": 2}] + [{"job": f"f{i}", "seed": i, "_line": 3 + i} for i in range(5)]
        out = tmp_path / "out"
        pool = RayPool([s.url for s in servers], per_server=1, patience=3.0, poll_seconds=0.5, actor_options=WORKER)
        stream = io.StringIO()
        runner = Runner(json.loads(FAKE_WORKFLOW.read_text()), rows, pool, str(out), on_change=ProgressBar(stream, every=0.05), wait_seconds=0.05)
        counts = runner.run()
        pool.close()
        lines = stream.getvalue().splitlines()  # the progress bar: each worker's jobs and the running one's step, from its server's /ws
        assert any(all(f"{s.url}: " in line for s in servers) and "/4" in line for line in lines), lines
        assert counts["done"] == 6 and counts["failed"] == 0, [(j["job"], j["state"], j["error"]) for j in runner.jobs() if j["state"] != "done"]
        delivered = {r["job"]: r["server"] for r in results(out)}
        assert delivered["unlucky"] == servers[1].url and set(delivered.values()) == {s.url for s in servers}  # both servers worked
        tried = [json.loads(line) for line in (tmp_path / "failing" / "runs.jsonl").read_text().splitlines()]
        assert [(e["job"], e["ok"]) for e in tried if e["job"] == "unlucky"] == [("unlucky", False)]
    finally:
        for server in servers:
            server.stop()


FAKE_MAIN = """import argparse, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--output-directory", action="append")
args, _ = parser.parse_known_args()
out = args.output_directory[-1]
os.makedirs(out, exist_ok=True)
os.execv(sys.executable, [sys.executable, {server!r}, "--object-info", {info!r}, "--log", os.path.join(out, "runs.jsonl"),
                          "--output-dir", out, "--port", str(args.port), "--seconds", "0.4"])
"""


def _comfyui_folder(tmp_path: Path) -> tuple[str, str | None]:
    """A ComfyUI folder for --comfyui: a copy of the real one, or a folder whose main.py starts the pack's
    test server with ComfyUI's arguments."""
    if REAL:
        return str(ComfyServer(find_comfyui(), comfyui_python(), tmp_path / "install").home), comfyui_python()
    from zimage_pack.workflows.build import OBJECT_INFO_PATH

    folder = tmp_path / "fake_comfyui"
    folder.mkdir()
    (folder / "main.py").write_text(FAKE_MAIN.format(server=str(HERE / "fake_comfy_server.py"), info=OBJECT_INFO_PATH))
    return str(folder), sys.executable


def _pid_listening_on(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in command and command[command.index(b"--port") + 1] == port.encode():
            return int(pid)
    raise AssertionError(f"no process serves {url}")


def test_workers_that_start_their_own_comfyui_restart_it_when_it_dies(cluster, tmp_path):
    comfyui, python = _comfyui_folder(tmp_path)
    outputs = tmp_path / "outputs"  # both ComfyUIs save here (ComfyUI takes the last --output-directory): the executions
    extra = ("--cpu", "--output-directory", str(outputs)) if REAL else ("--output-directory", str(outputs))
    pool = RayPool(comfyui=comfyui, workers=2, comfyui_python=python, comfyui_args=extra, gpus_per_server=0, per_server=2, patience=3.0,
                   poll_seconds=0.5, actor_options=WORKER)
    try:
        workflow, rows = workflow_and_rows(24, prefix="c")
        out = tmp_path / "out"
        runner = Runner(workflow, rows, pool, str(out))
        victim = pool.keys()[0]
        first_url = pool.server_of(victim)
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(runner.run()))
        thread.start()

        def executions() -> list[str]:
            return executions_in(outputs)

        wait_until(lambda: len(executions()) >= 4, what="four jobs run")
        os.kill(_pid_listening_on(first_url), signal.SIGKILL)  # the ComfyUI the first worker started
        thread.join(timeout=300)
        assert not thread.is_alive(), "the batch did not finish"
        names = sorted(r["job"] for r in rows)
        assert outcome["done"] == 24 and outcome["failed"] == 0, outcome
        assert sorted(r["job"] for r in results(out)) == names  # each delivered once
        ran = executions()
        assert sorted(set(ran)) == names and len(ran) - len(names) <= 2 * pool.capacity  # again only what died in flight with that ComfyUI
        assert victim in pool.keys() and pool.server_of(victim) != first_url  # the same worker, restarted by Ray with a new ComfyUI
    finally:
        pool.close()


def test_a_server_that_does_not_answer_at_the_start_is_left_out_with_a_message(cluster, tmp_path, capsys):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    server = Server(tmp_path / "alive", real=False)
    try:
        rows = [{"job": f"a{i}", "seed": i, "_line": 2 + i} for i in range(4)]
        pool = RayPool([dead, server.url], per_server=2, patience=1.0, poll_seconds=0.5, actor_options=WORKER)
        assert pool.keys() == [server.url]
        assert f"{dead} left out" in capsys.readouterr().out
        counts = Runner(json.loads(FAKE_WORKFLOW.read_text()), rows, pool, str(tmp_path / "out")).run()
        pool.close()
        assert counts["done"] == 4 and sorted(server.executions()) == [f"a{i}" for i in range(4)]
    finally:
        server.stop()


def test_a_comfyui_folder_without_main_py_is_refused_with_its_name(cluster, tmp_path, capsys):
    with pytest.raises(ConnectionError) as refused:
        RayPool(comfyui=str(tmp_path / "not_comfyui"), workers=1, gpus_per_server=0, actor_options=WORKER)
    assert "not_comfyui" in str(refused.value)
    said = capsys.readouterr().out  # the worker's own reason, from its node
    assert "worker-0 left out" in said and "no main.py there (expected a ComfyUI folder with this pack in custom_nodes/)" in said, said
