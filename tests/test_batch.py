"""Prompt lists and seed sweeps: files, seed modes, one encoding per distinct prompt, flat memory,
interrupt keeping what is done, and the pictures' metadata per item."""

import copy
import json
import os
import weakref

import pytest

from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.image_metadata import read_metadata
from zimage_pack.nodes import batch_nodes
from zimage_pack.samplers.prompt_list import PromptItem, assign_seeds, parse_prompt_lines, read_prompt_file, run_items
from zimage_pack.workflows.headless import run_prompt

LIST_API = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example_workflows", "api", "z_image_turbo_prompt_list_api.json")


def test_typed_lines_skip_blanks_and_comments():
    assert [i.prompt for i in parse_prompt_lines("a cat\n\n# a note\n  a dog  \n")] == ["a cat", "a dog"]


def test_prompt_files_in_three_formats(tmp_path):
    (tmp_path / "p.txt").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "p.csv").write_text("prompt,negative,seed\n\"a, b\",blurry,7\nc,,\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text('{"prompt": "x", "seed": 3}\n\n{"prompt": "y", "negative": "n"}\n', encoding="utf-8")
    assert read_prompt_file(str(tmp_path / "p.txt")) == [PromptItem("one"), PromptItem("two")]
    assert read_prompt_file(str(tmp_path / "p.csv")) == [PromptItem("a, b", "blurry", 7), PromptItem("c", "", None)]
    assert read_prompt_file(str(tmp_path / "p.jsonl")) == [PromptItem("x", "", 3), PromptItem("y", "n", None)]


@pytest.mark.parametrize("name, text, fragment", [
    ("no_header.csv", "a cat,1\n", "'prompt' column"),
    ("bad.jsonl", '{"prompt": "a"}\nnot json\n', "line 2"),
    ("seed.jsonl", '{"prompt": "a", "seed": "soon"}\n', "seed 'soon'"),
    ("empty.jsonl", '{"negative": "a"}\n', "no prompt"),
    ("p.md", "a\n", ".txt, .csv, .jsonl"),
])
def test_bad_prompt_files_are_refused_by_line(tmp_path, name, text, fragment):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ZImageInputError, match="file") as err:
        read_prompt_file(str(tmp_path / name))
    assert fragment in str(err.value)


def test_seed_modes():
    items = [PromptItem("a"), PromptItem("b", seed=99), PromptItem("c")]
    assert [i.seed for i in assign_seeds(items, 10, "fixed")] == [10, 99, 10]
    assert [i.seed for i in assign_seeds(items, 10, "increment")] == [10, 99, 12]
    drawn = [i.seed for i in assign_seeds(items, 10, "random")]
    assert drawn[1] == 99 and drawn[0] != drawn[2] and drawn == [i.seed for i in assign_seeds(items, 10, "random")]
    assert drawn != [i.seed for i in assign_seeds(items, 11, "random")]
    with pytest.raises(ZImageInputError, match="seed_mode"):
        assign_seeds(items, 1, "sometimes")


def test_distinct_prompts_are_encoded_once_and_dropped_after_their_last_use():
    encoded, alive = [], []
    items = [PromptItem(p) for p in "abacba"]

    def generate(index, item, positive, negative):
        alive.append(positive)

    run_items(items, lambda text: encoded.append(text) or f"<{text}>", generate)
    assert encoded == ["a", "b", "c"] and alive == [f"<{p}>" for p in "abacba"]


def test_interrupt_between_items_keeps_the_finished_ones():
    done = []

    def check():
        if len(done) == 2:
            raise InterruptedError

    with pytest.raises(InterruptedError):
        run_items([PromptItem(str(i)) for i in range(5)], str, lambda i, item, p, n: done.append(item.prompt), check)
    assert done == ["0", "1"]


def _list_prompt(items: int, mode="increment", text=None) -> dict:
    prompt = copy.deepcopy(json.load(open(LIST_API, encoding="utf-8")))
    for node in prompt.values():
        if node["class_type"] == "ZImagePromptList":
            node["inputs"].update(prompts=text or "\n".join(f"prompt {i % 3}" for i in range(items)), seed=5, seed_mode=mode)
        if node["class_type"] == "ZImagePromptListGenerate":
            node["inputs"].update(width=32, height=32, steps=2)
    return prompt


def test_prompt_list_workflow_saves_one_picture_per_item_with_its_own_prompt_and_seed(real_named_models, monkeypatch):
    monkeypatch.setenv("ZIMAGE_OUTPUT_DIR", str(real_named_models / "output"))
    encodes = []
    real_encode = batch_nodes.encode_to_conditioning
    monkeypatch.setattr(batch_nodes, "encode_to_conditioning", lambda enc, text: encodes.append(text) or real_encode(enc, text))
    prompt = _list_prompt(6)
    results, ui = run_prompt(prompt, extra_pnginfo={"workflow": {"nodes": []}})
    gen_id = next(k for k, n in prompt.items() if n["class_type"] == "ZImagePromptListGenerate")
    files = results[gen_id][0]
    assert len(files) == 6 and len(ui[gen_id]["images"]) == 6 and sorted(encodes) == ["prompt 0", "prompt 1", "prompt 2"]
    for i, path in enumerate(files):
        meta = read_metadata(path)
        assert meta["parameters"].startswith(f"prompt {i % 3}\n") and f"Seed: {5 + i}," in meta["parameters"]
        assert "Model hash: " in meta["parameters"] and "Size: 32x32" in meta["parameters"] and meta["prompt"] == prompt


def test_memory_is_flat_over_a_list(real_named_models, monkeypatch):
    """No picture, latent or encoding of a finished item is still alive when the next one is saved
    (five items show it as well as a hundred: any leak keeps the first one alive at the second)."""
    monkeypatch.setenv("ZIMAGE_OUTPUT_DIR", str(real_named_models / "output"))
    earlier, alive_counts = [], []
    real_save = batch_nodes.save_pictures

    def spy(images, *args):
        alive_counts.append(sum(ref() is not None for ref in earlier))
        earlier.append(weakref.ref(images))
        return real_save(images, *args)

    monkeypatch.setattr(batch_nodes, "save_pictures", spy)
    prompt = _list_prompt(5)
    for node in prompt.values():
        if node["class_type"] == "ZImagePromptListGenerate":
            node["inputs"].update(width=16, height=16, steps=1)
    run_prompt(prompt)
    assert len(alive_counts) == 5 and max(alive_counts) == 0


def test_cancel_mid_list_keeps_the_saved_pictures(real_named_models, monkeypatch):
    from zimage_pack.nodes import comfy_services

    monkeypatch.setenv("ZIMAGE_OUTPUT_DIR", str(real_named_models / "output"))
    saved = []
    real_save = batch_nodes.save_pictures
    monkeypatch.setattr(batch_nodes, "save_pictures", lambda *a: saved.extend(real_save(*a)) or saved[-1:])

    def interrupt():
        if len(saved) == 2:
            raise InterruptedError("cancelled")

    monkeypatch.setattr(comfy_services, "check_interrupt", interrupt)
    with pytest.raises(InterruptedError):
        run_prompt(_list_prompt(5))
    assert len(saved) == 2 and all(os.path.exists(s["path"]) for s in saved)


def test_list_outputs_run_any_node_once_per_item(real_named_models):
    """Wired to ordinary nodes, ComfyUI's list semantics run the text encoder and sampler per item."""
    prompt = _list_prompt(3, "fixed", "a\nb\nc")
    gen_id = next(k for k, n in prompt.items() if n["class_type"] == "ZImagePromptListGenerate")
    list_id = next(k for k, n in prompt.items() if n["class_type"] == "ZImagePromptList")
    del prompt[gen_id]
    prompt["20"] = {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": [list_id, 0]}}
    prompt["21"] = {"class_type": "ZImageEmptyLatent", "inputs": {"width": 32, "height": 32, "batch_size": 1}}
    prompt["22"] = {"class_type": "ZImageTurboSampler", "inputs": {"model": ["1", 0], "positive": ["20", 0], "latent_image": ["21", 0],
                                                                  "seed": [list_id, 2], "steps": 1, "shift": 3.0, "denoise": 1.0}}
    results, _ = run_prompt(prompt)
    latents = results["22"][0]
    assert len(latents) == 3 and not (latents[0]["samples"] - latents[1]["samples"]).abs().max() == 0


def test_the_prompt_file_is_offered_as_a_list_of_the_input_folders_text_files(tmp_path, monkeypatch):
    """ComfyUI refuses a value outside a list input at queue time (value_not_in_list): a missing or
    outside file never reaches the node."""
    monkeypatch.setenv("ZIMAGE_INPUT_DIR", str(tmp_path))
    (tmp_path / "sub").mkdir()
    for name in ("prompts.csv", "sub/more.jsonl", "notes.txt", "picture.png", ".hidden.txt"):
        (tmp_path / name).write_text("prompt\na\n")
    choices = batch_nodes.ZImagePromptList.INPUT_TYPES()["optional"]["file"][0]
    assert choices == ["", "notes.txt", "prompts.csv", "sub/more.jsonl"]
    assert not hasattr(batch_nodes.ZImagePromptList, "VALIDATE_INPUTS")  # it would switch ComfyUI's list check off
    with pytest.raises(ZImageInputError, match="no prompt"):
        batch_nodes.ZImagePromptList().make("\n# only a comment\n", 0, "fixed")
