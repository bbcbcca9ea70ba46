"""The queue client on one server, from its own process (no Ray), against a server that speaks ComfyUI's
API on 127.0.0.1 (tests/fake_comfy_server.py, a real process): rows checked before anything is sent, a
failed job retried, a killed client resumed without losing or repeating a job, the job store. Several
servers and a Ray cluster: tests/test_queue_ray.py."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from zimage_pack.client.cli import main as queue_main

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKFLOW = os.path.join(ROOT, "example_workflows", "api", "z_image_turbo_text_to_image_api.json")
LORA_WORKFLOW = os.path.join(ROOT, "example_workflows", "api", "z_image_turbo_lora_stack_api.json")


@pytest.fixture()
def object_info():
    """/object_info as ComfyUI v0.33 answers it for these workflows' nodes, with the model lists of a models
    folder holding the workflows' files (written by scripts/build_workflows.sh inside ComfyUI; a test there
    checks it is current)."""
    from zimage_pack.workflows.build import OBJECT_INFO_PATH

    return OBJECT_INFO_PATH


class Servers:
    def __init__(self, tmp_path, object_info):
        self.tmp_path, self.object_info, self.procs = tmp_path, object_info, {}

    def start(self, name: str, seconds: float = 0.2, fail_seed: int | None = None) -> str:
        command = [sys.executable, os.path.join(HERE, "fake_comfy_server.py"), "--object-info", self.object_info,
                   "--log", str(self.tmp_path / f"{name}.log"), "--seconds", str(seconds), "--output-dir", str(self.tmp_path / f"{name}_output")]
        if fail_seed is not None:
            command += ["--fail-seed", str(fail_seed)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert line.startswith("listening on "), f"the test server did not start: {line!r}"
        self.procs[name] = proc
        return f"127.0.0.1:{int(line.split()[-1])}"

    def log(self, name: str) -> list[dict]:
        path = self.tmp_path / f"{name}.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def stop_all(self):
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


@pytest.fixture()
def servers(tmp_path, object_info):
    running = Servers(tmp_path, object_info)
    yield running
    running.stop_all()


def _table(tmp_path, rows: list[dict], name="jobs.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _states(out) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(os.path.join(out, "jobs.sqlite")) as db:
        return dict(db.execute("select job, state from zimage_queue_jobs"))


def _results(out) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out, "results.jsonl"), encoding="utf-8")]


def test_the_client_imports_neither_torch_nor_the_engine():
    code = "import sys, zimage_pack.client.cli; print(sorted(m for m in sys.modules if m in ('torch', 'diffusers', 'zimage_pack.loaders', 'zimage_pack.nodes')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_bad_rows_are_reported_per_row_and_nothing_is_sent(servers, tmp_path, capsys):
    url = servers.start("a")
    csv = tmp_path / "jobs.csv"
    csv.write_text("prompt,seed,width,6.stepz,1.weight_dtype,99.text,colour\n"
                   "a fox,1,512,,,,\n"           # fine
                   "a cat,x,512,,,,\n"           # seed is no number
                   "a dog,2,99999,,,,\n"         # width above the maximum
                   "an owl,3,512,4,,,\n"         # no input 'stepz'
                   "a bee,4,512,,fp12,,\n"       # not in the list
                   "a elk,5,512,,,hi,\n"         # no node 99
                   "a yak,6,512,,,,red\n"        # unknown column
                   "a gnu,7,250,,,,\n",          # not a multiple of 16
                   encoding="utf-8")
    code = queue_main([WORKFLOW, str(csv), "--server", url, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "nothing was sent" in err
    for row, fragment in ((2, "'x' is not a whole number"), (3, "99999 is above the maximum 16384"), (4, "no input 'stepz'"),
                          (5, "'fp12' is not in the list"), (6, "no node '99'"), (7, "column 'colour': unknown"),
                          (8, "250 is not a multiple of 16 (nearest: 256)")):
        assert any(line.strip().startswith(f"row {row} (line {row + 1})") and fragment in line for line in err.splitlines()), (row, err)
    assert "row 1 " not in err
    time.sleep(0.3)
    assert servers.log("a") == [] and not os.path.exists(tmp_path / "out" / "jobs.sqlite")


def test_jobs_run_with_results_and_files(servers, tmp_path):
    url = servers.start("a")
    rows = [{"job": f"j{i}", "prompt": f"prompt {i}", "seed": 100 + i, "lora_strength": 0.5} for i in range(6)]
    out = str(tmp_path / "out")
    assert queue_main([LORA_WORKFLOW, _table(tmp_path, rows), "--server", url, "--out", out, "--per-server", "2"]) == 0
    results = _results(out)
    assert sorted(r["job"] for r in results) == [f"j{i}" for i in range(6)]
    for r in results:
        assert r["server"] == f"http://{url}" and r["seed"] == 100 + int(r["job"][1:]) and r["seconds"] > 0
        assert os.path.getsize(os.path.join(out, r["files"][0])) > 0
    assert sorted(e["seed"] for e in servers.log("a")) == [100 + i for i in range(6)]


def test_a_failed_job_is_tried_again_then_reported_with_comfyuis_message(servers, tmp_path, capsys):
    url = servers.start("a", fail_seed=13)
    out = str(tmp_path / "out")
    rows = [{"job": "unlucky", "seed": 13}, {"job": "fine", "seed": 14}]
    assert queue_main([WORKFLOW, _table(tmp_path, rows), "--server", url, "--out", out, "--retries", "1"]) == 1
    assert [e["ok"] for e in servers.log("a") if e["job"] == "unlucky"] == [False, False]  # the first try and one retry
    assert [r["job"] for r in _results(out)] == ["fine"]
    err = capsys.readouterr().err
    assert "failed unlucky:" in err and "seed 13" in err, err


def test_several_servers_without_ray_say_what_to_install(servers, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as on an install without the [cluster] extra
    monkeypatch.delitem(sys.modules, "zimage_pack.client.ray_pool", raising=False)
    urls = [servers.start("a"), servers.start("b")]
    code = queue_main([WORKFLOW, _table(tmp_path, [{"seed": 1}]), "--server", urls[0], "--server", urls[1], "--out", str(tmp_path / "out")])
    assert code == 2 and 'pip install "comfyui-zimage[cluster]"' in capsys.readouterr().err
    assert servers.log("a") == servers.log("b") == []


def test_a_killed_client_resumes_with_exactly_the_missing_jobs(servers, tmp_path):
    url = servers.start("a", seconds=0.3)
    rows = [{"job": f"j{i}", "seed": i, "prompt": f"p{i}"} for i in range(8)]
    table, out = _table(tmp_path, rows), str(tmp_path / "out")
    command = [sys.executable, "-m", "zimage_pack.client.cli", WORKFLOW, table, "--server", url, "--out", out, "--per-server", "3"]
    client = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    results = os.path.join(out, "results.jsonl")
    deadline = time.time() + 30
    while (not os.path.exists(results) or len(open(results).read().splitlines()) < 3) and time.time() < deadline:
        time.sleep(0.02)
    client.send_signal(signal.SIGKILL)  # with jobs submitted and not yet collected
    client.wait()
    before = {r["job"] for r in _results(out)}
    assert 3 <= len(before) < 8
    assert subprocess.run(command, stderr=subprocess.DEVNULL).returncode == 0
    assert sorted(r["job"] for r in _results(out)) == sorted(f"j{i}" for i in range(8))
    executions = [e["job"] for e in servers.log("a")]
    assert sorted(executions) == sorted(f"j{i}" for i in range(8))  # nothing sent twice: the in-flight ones were collected
    assert _states(out) == {f"j{i}": "done" for i in range(8)}
    # a third run has nothing left to do and sends nothing
    assert subprocess.run(command, stderr=subprocess.DEVNULL).returncode == 0 and len(servers.log("a")) == 8


def test_csv_text_becomes_the_inputs_type(servers, tmp_path):
    url = servers.start("a")
    csv = tmp_path / "jobs.csv"
    csv.write_text('prompt,seed,Prompt.text,6.denoise\n"a fox, in snow",7,,0.5\n', encoding="utf-8")
    out = str(tmp_path / "out")
    assert queue_main([WORKFLOW, str(csv), "--server", url, "--out", out]) == 0
    assert [e["seed"] for e in servers.log("a")] == [7]
    assert _results(out)[0]["seed"] == 7


def test_columns_find_their_inputs():
    from zimage_pack.client.overrides import OverrideError, apply_row

    workflow = json.load(open(LORA_WORKFLOW))
    graph, applied = apply_row(workflow, {"prompt": "a yak", "seed": 5, "width": 512, "lora_strength": 0.3, "KSampler.steps": 4, "_line": 2})
    kinds = {(graph[n]["class_type"], name): value for _, n, name, value in applied}
    assert kinds[("CLIPTextEncode", "text")] == "a yak" and kinds[("KSampler", "seed")] == 5
    assert kinds[("EmptySD3LatentImage", "width")] == 512 and kinds[("KSampler", "steps")] == 4
    assert {name for (kind, name) in kinds if kind == "ZImageLoraStack"} == {f"strength_{i}" for i in range(1, 5)}
    assert workflow != graph and json.load(open(LORA_WORKFLOW)) == workflow  # the workflow itself is untouched
    with pytest.raises(OverrideError, match="no node 'Sampler'"):
        apply_row(workflow, {"Sampler.steps": 3})


@pytest.mark.parametrize("job, problem", [("../../somewhere/x", "has a path separator"), ("a\\b", "has a path separator"), ("..", "starts with '.'"),
                                          (".hidden", "starts with '.'"), ("bad\nname", "has control characters"), ("x" * 200, "is 200 characters long")])
def test_a_job_name_that_would_leave_the_out_folder_is_refused_by_row_with_nothing_sent(servers, tmp_path, capsys, job, problem):
    url = servers.start("a")
    csv = tmp_path / "jobs.csv"
    quoted = '"' + job.replace('"', '""') + '"'  # a CSV field may hold any text, a line break too
    csv.write_text("job,prompt\nfine,a fox\n" + quoted + ",a cat\n", encoding="utf-8")
    code = queue_main([WORKFLOW, str(csv), "--server", url, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "nothing was sent" in err and problem in err and "row 2 (line 3)" in err, err
    time.sleep(0.3)
    assert servers.log("a") == [] and not (tmp_path / "somewhere").exists()


@pytest.mark.parametrize("server_name", ["x.png/../../../../evil", "x.\npng", "x.p\x00ng", "noextension", None])
def test_a_server_answer_cannot_make_the_client_write_outside_out_files(tmp_path, server_name):
    from zimage_pack.client.runner import local_file

    with pytest.raises(ValueError, match="not a plain file extension"):
        local_file(str(tmp_path), "job", 0, server_name)
    assert local_file(str(tmp_path), "job", 3, "ComfyUI_00001_.png") == os.path.realpath(tmp_path / "files" / "job_03.png")


def test_an_output_folder_of_the_earlier_client_is_taken_over_without_running_its_done_jobs_again(servers, tmp_path):
    from zimage_pack.client.overrides import apply_row
    from zimage_pack.client.store import graph_hash

    url = servers.start("a")
    workflow = json.load(open(WORKFLOW))
    rows = [{"job": "old-done", "seed": 1}, {"job": "old-pending", "seed": 2}]
    out = tmp_path / "out"
    (out / "files").mkdir(parents=True)
    (out / "files" / "old-done_00.png").write_bytes(b"png")
    jobs = {}
    for row, state in zip(rows, ("done", "pending")):  # the job file as the client before the job store wrote it
        graph, _ = apply_row(workflow, row)
        jobs[row["job"]] = {"job": row["job"], "line": None, "graph": graph_hash(graph), "seed": row["seed"], "state": state, "attempts": 0, "tried": []}
    jobs["old-done"].update(server=f"http://{url}", prompt_id="p-old", files=["files/old-done_00.png"], seconds=1.0, done_on=f"http://{url}", done_at=1.0)
    (out / "jobs.json").write_text(json.dumps({"jobs": jobs}))
    assert queue_main([WORKFLOW, _table(tmp_path, rows), "--server", url, "--out", str(out)]) == 0
    assert [e["job"] for e in servers.log("a")] == ["old-pending"]
    assert sorted(r["job"] for r in _results(out)) == ["old-done", "old-pending"]
    assert not (out / "jobs.json").exists() and (out / "jobs.json.imported").exists()
    assert _states(str(out)) == {"old-done": "done", "old-pending": "done"}


def test_the_progress_bar_shows_jobs_done_and_each_servers_step_from_ws(servers, tmp_path):
    import io

    from zimage_pack.client.cli import ProgressBar
    from zimage_pack.client.pools import LocalPool
    from zimage_pack.client.runner import Runner
    from zimage_pack.client.table import read_table

    url = servers.start("a", seconds=0.8)  # the test server sends 4 progress steps per job over /ws
    stream = io.StringIO()
    pool = LocalPool(url, per_server=1, poll_seconds=0.1)
    runner = Runner(json.load(open(WORKFLOW)), read_table(_table(tmp_path, [{"job": f"j{i}", "seed": i} for i in range(3)])), pool,
                    str(tmp_path / "out"), on_change=ProgressBar(stream, every=0.05), wait_seconds=0.05)
    assert runner.run()["done"] == 3
    pool.close()
    lines = stream.getvalue().splitlines()
    assert any(f"http://{url}: 1 in flight " in line and "/4" in line for line in lines), lines  # a step of the running job
    assert lines[-1].startswith("[" + "#" * 30 + "] 3/3 done, 0 failed"), lines[-1]


@pytest.mark.parametrize("option, value, message", [("--per-server", "0", "argument --per-server: 0 is below 1"), ("--retries", "-1", "argument --retries: -1 is below 0"),
                                                    ("--give-up-after", "soon", "argument --give-up-after: 'soon' is not a number")])
def test_numeric_options_out_of_range_are_refused_by_name(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as stopped:
        queue_main([WORKFLOW, _table(tmp_path, [{"seed": 1}]), "--server", "127.0.0.1:9", "--out", str(tmp_path / "out"), option, value])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
