"""The pack in a real ComfyUI through its HTTP API (main.py --cpu on loopback, this pack in custom_nodes,
models from a seed at the shapes ComfyUI builds: tests/example_files.py): every example workflow runs as
shipped; no file outside ComfyUI's folders is read, no input takes the server down
(a watchdog kills it past 16 GiB and the test fails), every bad file or name gets the pack's error, and
the next prompt runs. The same cases without ComfyUI: tests/test_confinement.py."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from comfyui_harness import ComfyServer, comfyui_python, execution_error, find_comfyui, rss_bytes
from example_files import shrink_workflow, write_example_files

pytestmark = pytest.mark.comfyui

SECRET = "SECRET-LINE-never-shown"
RAW_ERRORS = ("RecursionError", "UnicodeDecodeError", "_csv.Error", "OSError", "embedded null byte", "Traceback")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("comfyui")
    # a full-size Qwen3-4B in fp8 (~4.5 GB in ComfyUI) and thin real-width transformers (~2 GB each in bf16). On the
    # CPU ComfyUI would hold the transformers in float32 (it computes in float32 there either way): --bf16-unet keeps
    # them as stored, as a GPU would, so two of them, their LoRA backups and the text encoder fit CI's 24 GiB.
    comfy = ComfyServer(find_comfyui(), comfyui_python(), work, memory_limit=16 * 2**30, extra_args=("--bf16-unet",))
    outside = work / "outside"
    outside.mkdir()
    for suffix in (".txt", ".csv", ".png", ".safetensors"):
        (outside / f"secret{suffix}").write_text(SECRET + "\n")
    models = comfy.folder("models")
    inputs = comfy.folder("input")
    write_example_files(models, inputs)
    for folder in LOADERS.values():
        (models / folder[2]).mkdir(parents=True, exist_ok=True)
        os.symlink(outside / "secret.safetensors", models / folder[2] / "link_out.safetensors")
    (inputs / "prompts.txt").write_text("a red fox\na lighthouse at dusk\n")
    (inputs / "deep.jsonl").write_text('{"prompt": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    (inputs / "bad_utf8.txt").write_bytes(b"a fox\n\xff\xfe\n")
    (inputs / "huge_field.csv").write_text("prompt\n" + "a" * (5 * 2**20) + "\n")
    (inputs / "big.txt").write_text("a red fox in snow, prompt line\n" * 1_700_000)  # 50 MB
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inputs / "plain.png")
    for suffix in (".txt", ".png"):
        os.symlink(outside / f"secret{suffix}", inputs / f"link_out{suffix}")
    comfy.start()
    yield comfy
    comfy.stop()
    assert not comfy.killed_for_memory, f"the server passed the memory watchdog (peak {comfy.peak_rss / 2**30:.1f} GiB)"


# every node input that names a model file: (node, input, models folder)
LOADERS = {"transformer": ("ZImageTransformerLoader", "model_name", "diffusion_models"), "text_encoder": ("ZImageTextEncoderLoader", "text_encoder_name", "text_encoders"),
           "vae": ("ZImageVAELoader", "vae_name", "vae"), "lora": ("ZImageLoraLoader", "lora_name", "loras"),
           "controlnet": ("ZImageControlNetLoader", "controlnet_name", "model_patches"), "bundle": ("ZImageStepBundleLoader", "bundle_name", "zimage_bundles")}


def _loader_graph(info: dict, class_type: str, input_name: str, value: str) -> dict:
    """The loader with ``value`` and defaults elsewhere, its output shown by PreviewAny (a model input
    is fed by a transformer loader on the real file)."""
    from zimage_pack.workflows import build

    graph = {"9": {"class_type": "ZImageTransformerLoader", "inputs": {"model_name": build.TRANSFORMER_FILE, "weight_dtype": "default"}}}
    inputs = {}
    for name, spec in info[class_type]["input"]["required"].items():
        kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
        if name == input_name:
            inputs[name] = value
        elif isinstance(kind, list) or kind == "COMBO":
            inputs[name] = options.get("default", _options(spec)[0])
        elif "default" in options:
            inputs[name] = options["default"]
        else:
            inputs[name] = ["9", 0]
    graph["1"] = {"class_type": class_type, "inputs": inputs}
    graph["2"] = {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}
    return graph


def _options(spec) -> list:
    """A combo input's choices in /object_info: V1 nodes give the list itself, V3 nodes ``["COMBO", {"options": …}]``."""
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def _shown(entry) -> str:
    return json.dumps(entry)


def _prompt_list(file="", prompts="a fox", repeat=1) -> dict:
    return {"1": {"class_type": "ZImagePromptList", "inputs": {"prompts": prompts, "seed": 0, "seed_mode": "increment", "repeat": repeat, "file": file}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def _read_metadata(image) -> dict:
    return {"1": {"class_type": "ZImageReadMetadata", "inputs": {"image": image}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def _text_to_image(changes: dict | None = None) -> dict:
    from zimage_pack.workflows import build

    with open(build.workflow_path("z_image_turbo_text_to_image_api.json"), encoding="utf-8") as handle:
        prompt = shrink_workflow(json.load(handle))
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"].update(steps=2)
    for (class_type, name), value in (changes or {}).items():
        next(n for n in prompt.values() if n["class_type"] == class_type)["inputs"][name] = value
    return prompt


def _assert_refused_without_content(result: dict, *fragments) -> str:
    """Refused at queue time (ComfyUI's validation) or by the node; returns the message the user reads
    (ComfyUI's own error report also carries a traceback of its code: not the message)."""
    text = _shown(result)
    assert SECRET not in text, text
    if "refused" in result:
        message = _shown(result["refused"])
    else:
        assert result["status"]["status_str"] == "error", text
        error = execution_error(result)
        message = error["exception_message"]
        assert error["exception_type"].endswith("ZImageInputError"), error["exception_type"]
    for raw in RAW_ERRORS:
        assert raw not in message, (raw, message)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def _assert_next_prompt_runs(server) -> None:
    result = server.run(_prompt_list(prompts="still\nalive"))
    assert result["status"]["status_str"] == "success", _shown(result)
    assert server.proc.poll() is None


def test_the_pack_loads_and_its_nodes_take_no_free_form_path(server):
    info = server.get("/object_info")
    assert not [line for line in server.log_text().splitlines() if "IMPORT FAILED" in line and "comfyui-zimage" in line]
    assert "ZImagePromptList" in info and "ZImageReadMetadata" in info
    assert "tokenizer_path" not in json.dumps(info["ZImageTextEncoderLoader"]["input"])
    offered = _options(info["ZImagePromptList"]["input"]["optional"]["file"])
    assert "prompts.txt" in offered and "link_out.txt" not in offered and not any(o.startswith("/") for o in offered)
    assert "plain.png" in _options(info["ZImageReadMetadata"]["input"]["required"]["image"])


def test_a_prompt_file_inside_the_input_folder_works(server):
    result = server.run(_prompt_list(file="prompts.txt"))
    assert result["status"]["status_str"] == "success", _shown(result)
    assert "a lighthouse at dusk" in _shown(result["outputs"])


@pytest.mark.parametrize("kind", ["absolute", "absolute_missing", "dotdot", "dotdot_missing", "link"])
def test_a_prompt_file_outside_the_input_folder_is_refused_with_no_content_and_no_existence_hint(server, kind):
    outside = server.home.parent / "outside"
    name = {"absolute": str(outside / "secret.txt"), "absolute_missing": str(outside / "absent.txt"), "dotdot": "../../outside/secret.txt",
            "dotdot_missing": "../../outside/absent.txt", "link": "link_out.txt"}[kind]
    result = server.run(_prompt_list(file=name))
    text = _assert_refused_without_content(result, "value_not_in_list")
    # an outside file that exists and one that does not ("absent", as long as "secret") get the same answer
    other = server.run(_prompt_list(file=name.replace("secret", "absent") if "secret" in name else name.replace("absent", "secret")))
    assert _shown(other["refused"]).replace("secret", "absent") == text.replace("secret", "absent")


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "link"])
def test_read_image_metadata_cannot_read_outside_the_input_folder(server, kind):
    name = {"absolute": str(server.home.parent / "outside" / "secret.png"), "dotdot": "../../outside/secret.png", "link": "link_out.png"}[kind]
    _assert_refused_without_content(server.run(_read_metadata(name)), "value_not_in_list")
    result = server.run(_read_metadata("plain.png"))
    assert result["status"]["status_str"] == "success", _shown(result)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_no_model_input_reads_outside_its_models_folder(server, loader):
    class_type, input_name, folder = LOADERS[loader]
    info = server.get("/object_info")
    offered = _options(info[class_type]["input"]["required"][input_name])
    assert not any(name.startswith("/") or ".." in name.split("/") for name in offered)
    linked = server.run(_loader_graph(info, class_type, input_name, "link_out.safetensors"))  # listed by ComfyUI, refused by the pack
    text = _assert_refused_without_content(linked, "a link that leads out of", f"models/{folder}")
    assert str(server.home) not in text
    for name in ("/etc/hostname", str(server.home.parent / "outside" / "secret.safetensors"), "../../outside/secret.safetensors"):
        _assert_refused_without_content(server.run(_loader_graph(info, class_type, input_name, name)), "value_not_in_list")


def test_the_native_text_to_image_graph_saves_how_each_picture_was_made(server):
    from zimage_pack.loaders.image_metadata import read_metadata

    result = server.run(_text_to_image({("KSampler", "seed"): 1234}))
    assert result["status"]["status_str"] == "success", _shown(result)
    (image,) = [i for output in result["outputs"].values() for i in output.get("images", [])]
    meta = read_metadata(str(server.home / "output" / image["subfolder"] / image["filename"]))
    text = meta["parameters"]
    assert "a red fox" in text and "Seed: 1234" in text and "z_image_turbo_bf16" in text, text  # read off UNETLoader, CLIPTextEncode, KSampler
    assert meta["prompt"] and "workflow" not in meta or meta["workflow"] is not None


@pytest.mark.parametrize("prefix, found", [("..", "'..' or '.' parts"), ("", "an empty name"), ("line\nbreak", "control characters"),
                                           ("nul\x00byte", "control characters"), ("x" * 5000, "a name of 5000 bytes"), ("../../escape", "'..' or '.' parts")])
def test_bad_save_prefixes_get_the_packs_error(server, prefix, found):
    prompt = _text_to_image({("ZImageSaveImage", "filename_prefix"): prefix})
    text = _assert_refused_without_content(server.run(prompt), found)
    assert str(server.home) not in text and len(text) < 4000


@pytest.mark.parametrize("file, found", [("deep.jsonl", "JSON nested 100000 levels deep"), ("bad_utf8.txt", "not UTF-8 on line 2"),
                                         ("huge_field.csv", "huge_field.csv"), ("big.txt", "at most 8 MiB")])
def test_bad_prompt_files_get_the_packs_error(server, file, found):
    text = _assert_refused_without_content(server.run(_prompt_list(file=file)), found)
    assert str(server.home) not in text
    _assert_next_prompt_runs(server)


def test_a_prompt_list_that_would_take_the_server_down_is_refused_and_the_next_prompt_runs(server):
    lines = "\n".join(f"prompt {i}: a red fox in fresh snow at sunrise" for i in range(10_000))
    before = server.peak_rss
    _assert_refused_without_content(server.run(_prompt_list(prompts=lines, repeat=1000), timeout=120), "repeat 1000", "at most about")
    assert server.peak_rss < before + 2 * 2**30
    _assert_next_prompt_runs(server)


def test_an_empty_latent_bigger_than_the_machine_is_refused_and_the_next_prompt_runs(server):
    from zimage_pack.samplers.memory_budget import host_available

    batch = min(4096, 2 * host_available() // (16 * 2048 * 2048 * 4) + 1)  # twice the host's free memory: refused on any machine
    prompt = _text_to_image()
    latent = next(k for k, n in prompt.items() if n["class_type"] == "EmptySD3LatentImage")
    prompt[latent] = {"class_type": "ZImageEmptyLatent", "inputs": {"width": 16384, "height": 16384, "batch_size": batch}}
    before = server.peak_rss
    _assert_refused_without_content(server.run(prompt, timeout=120), "Nothing was allocated")
    assert server.peak_rss < before + 2**30
    _assert_next_prompt_runs(server)


# The queue client (client/) against the real ComfyUI: its tests elsewhere use the pack's own test server.

def _queue_table(tmp_path, rows: list[dict]) -> str:
    import csv

    path = tmp_path / "jobs.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _executed_prompt_ids(server) -> set:
    return {prompt_id for prompt_id, entry in server.get("/history").items() if entry.get("status", {}).get("status_str") == "success"}


def test_the_queue_client_runs_a_table_on_the_real_server_exactly_once(server, tmp_path):
    from zimage_pack.client.cli import main as queue_main
    from zimage_pack.workflows import build

    rows = [{"job": f"fox-{i}", "prompt": "a red fox", "seed": 40 + i, "width": 64, "height": 48, "steps": 2} for i in range(3)]
    table, out = _queue_table(tmp_path, rows), tmp_path / "out"
    before = _executed_prompt_ids(server)
    workflow = build.workflow_path("z_image_turbo_text_to_image_api.json")
    assert queue_main([workflow, table, "--server", server.url, "--out", str(out)]) == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["job"] for r in results) == ["fox-0", "fox-1", "fox-2"]
    for result in results:
        picture = Image.open(out / result["files"][0])
        assert picture.size == (64, 48) and result["seed"] == 40 + int(result["job"][-1])
    ran = _executed_prompt_ids(server) - before
    assert len(ran) == 3  # each job ran once on the server
    assert queue_main([workflow, table, "--server", server.url, "--out", str(out)]) == 0  # a rerun sends nothing
    assert _executed_prompt_ids(server) - before == ran


def test_the_queue_client_checks_rows_against_the_real_servers_object_info(server, tmp_path, capsys):
    from zimage_pack.client.cli import main as queue_main
    from zimage_pack.workflows import build

    rows = [{"prompt": "a fox", "seed": 1, "width": 64, "steps": 2, "1.weight_dtype": "default"},
            {"prompt": "a cat", "seed": 2, "width": 100, "steps": 2, "1.weight_dtype": "default"},
            {"prompt": "a dog", "seed": 3, "width": 64, "steps": 2, "1.weight_dtype": "int3"}]
    before = _executed_prompt_ids(server)
    code = queue_main([build.workflow_path("z_image_turbo_text_to_image_api.json"), _queue_table(tmp_path, rows), "--server", server.url,
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "nothing was sent" in err
    assert "row 2 (line 3)" in err and "100 is not a multiple of 16" in err and "row 3 (line 4)" in err and "'int3' is not in the list" in err
    assert _executed_prompt_ids(server) == before



@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example_workflows", "api"))))
def test_every_example_api_workflow_runs_in_the_real_comfyui(server, name):
    """As a studio queues them (POST /prompt), at 64×48 and with the steps they ship."""
    from zimage_pack.workflows import build

    with open(build.workflow_path(name), encoding="utf-8") as handle:
        prompt = shrink_workflow(json.load(handle))
    result = server.run(prompt)
    assert "refused" not in result, _shown(result)
    assert result["status"]["status_str"] == "success", _shown(execution_error(result) or result)
    saved = [image for output in result["outputs"].values() for image in output.get("images", []) if image.get("type") == "output"]
    assert saved, "the workflow saved no picture"


def test_twenty_queued_prompts_keep_the_servers_memory_flat_and_free_unloads(server):
    """Comfy-Org's 16 GB template ran out of memory on its second queued run (workflow_templates #340):
    here 20 runs of the text-to-image workflow (2 steps, new seed each) after a first one."""
    def run(seed):
        result = server.run(_text_to_image({("KSampler", "seed"): seed}))
        assert result["status"]["status_str"] == "success", _shown(result)

    run(0)
    after_first = rss_bytes(server.proc.pid)
    for seed in range(1, 21):
        run(seed)
    growth = rss_bytes(server.proc.pid) - after_first
    assert growth < 512 * 2**20, f"the server grew by {growth / 2**20:.0f} MiB over 20 prompts"
    before_free = rss_bytes(server.proc.pid)
    status, _ = server.post("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    deadline = time.time() + 60  # ComfyUI frees between prompts, on its own thread
    while time.time() < deadline and rss_bytes(server.proc.pid) > before_free - 2**30:
        time.sleep(0.5)
    assert rss_bytes(server.proc.pid) < before_free - 2**30, "POST /free freed less than the transformer's 1.7 GB"
    encodes = server.log_text().count("Requested to load ZImageTEModel")
    run(21)  # and the next prompt loads them again: the text encoder too (its cached encoding went with /free)
    assert server.log_text().count("Requested to load ZImageTEModel") == encodes + 1
