"""Bad prompts, without ComfyUI (the services the nodes call: nodes/comfy_services.py, the prompt-file
reader, the memory checks): every input that names a file stays inside its folder, every bad file
or name gets the pack's error (no library exception, no server path, no file content, no hint whether
something outside exists), and no list or latent bigger than the machine is built. The same through a
real ComfyUI's HTTP API: tests/test_comfyui_api.py."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from zimage_pack.loaders.confined_paths import check_output_prefix, resolve_inside
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.image_metadata import read_metadata
from zimage_pack.nodes import comfy_services
from zimage_pack.samplers import memory_budget
from zimage_pack.samplers.prompt_list import MAX_PROMPT_FILE_BYTES, MAX_PROMPT_ROWS, read_prompt_file

SECRET = "SECRET-LINE-never-shown"


def _read_prompt_file_input(name):
    """What Z-Image Prompt List does with its ``file`` input."""
    return read_prompt_file(comfy_services.input_file(name, "file", "a .txt, .csv or .jsonl file"), shown_name=name)


@pytest.fixture()
def folders(tmp_path, monkeypatch):
    """An input folder, a models root and, beside them, a secret file outside both; a link in each
    folder points at the secret, another at a file outside that does not exist."""
    inside, models, outside = tmp_path / "input", tmp_path / "models", tmp_path / "outside"
    for folder in (inside, models / "loras", outside):
        folder.mkdir(parents=True)
    for suffix in (".txt", ".png", ".safetensors"):
        (outside / f"secret{suffix}").write_text(SECRET + "\n")
    (inside / "prompts.txt").write_text("a red fox\na lighthouse\n")
    os.symlink(outside / "secret.txt", inside / "link_out.txt")
    os.symlink(outside / "absent.txt", inside / "link_nowhere.txt")
    os.symlink(outside / "secret.png", inside / "link_out.png")
    os.symlink(outside / "secret.safetensors", models / "loras" / "link_out.safetensors")
    monkeypatch.setenv("ZIMAGE_INPUT_DIR", str(inside))
    monkeypatch.setattr(comfy_services, "_standalone_root", str(models))
    return {"input": inside, "models": models, "outside": outside}


def _refused(call, *fragments) -> str:
    with pytest.raises(ZImageInputError) as err:
        call()
    text = str(err.value)
    assert SECRET not in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


def _outside_names(folders, suffix):
    outside = folders["outside"]
    return {"absolute": str(outside / f"secret{suffix}"), "dotdot": f"../outside/secret{suffix}", "dotdot_deep": f"sub/../../outside/secret{suffix}",
            "absolute_missing": str(outside / f"absent{suffix}"), "dotdot_missing": f"../outside/absent{suffix}"}


@pytest.mark.parametrize("case", ["absolute", "dotdot", "dotdot_deep"])
def test_the_prompt_file_cannot_leave_the_input_folder(folders, case):
    name = _outside_names(folders, ".txt")[case]
    _refused(lambda: _read_prompt_file_input(name), "file:", "ComfyUI's input folder")


def test_an_outside_file_that_exists_and_one_that_does_not_get_the_same_answer(folders):
    """The error cannot be used to ask whether a path outside exists."""
    names = _outside_names(folders, ".txt")
    for there, missing in (("absolute", "absolute_missing"), ("dotdot", "dotdot_missing")):
        first = _refused(lambda: _read_prompt_file_input(names[there]))
        second = _refused(lambda: _read_prompt_file_input(names[missing]))
        assert first.replace("secret", "absent") == second  # "absent": a name as long as "secret"
    linked = _refused(lambda: _read_prompt_file_input("link_out.txt"), "a link that leads out of")
    dangling = _refused(lambda: _read_prompt_file_input("link_nowhere.txt"), "a link that leads out of")
    assert linked.replace("link_out", "X") == dangling.replace("link_nowhere", "X")


def test_a_file_inside_the_input_folder_still_works(folders):
    items = _read_prompt_file_input("prompts.txt")
    prompts, count = [i.prompt for i in items], len(items)
    assert prompts == ["a red fox", "a lighthouse"] and count == 2


@pytest.mark.parametrize("case", ["absolute", "dotdot", "link"])
def test_read_image_metadata_cannot_leave_the_input_folder(folders, case):
    name = {**_outside_names(folders, ".png"), "link": "link_out.png"}[case]
    _refused(lambda: read_metadata(comfy_services.input_file(name), shown_name=name), "image:")


@pytest.mark.parametrize("case", ["absolute", "dotdot", "link"])
def test_model_names_cannot_leave_their_models_folder(folders, case):
    name = {**_outside_names(folders, ".safetensors"), "link": "link_out.safetensors"}[case]
    text = _refused(lambda: comfy_services.model_path("loras", name), "loras model:", "models/loras")
    assert str(folders["models"]) not in text  # no server path in the message


def test_a_model_inside_its_folder_and_a_link_within_it_still_work(folders):
    real = folders["models"] / "loras" / "style.safetensors"
    real.write_bytes(b"x")
    os.symlink(real, folders["models"] / "loras" / "alias.safetensors")
    assert comfy_services.model_path("loras", "style.safetensors") == str(real)
    assert comfy_services.model_path("loras", "alias.safetensors") == str(real)
    assert "link_out.safetensors" in comfy_services.list_models("loras")  # listed (ComfyUI lists it too), refused when used


@pytest.mark.parametrize("name, found", [
    ("", "an empty name"), ("/etc/hostname", "an absolute path"), ("C:/Windows/win.ini", "an absolute path"), ("\\\\server\\share", "an absolute path"),
    ("../x.txt", "'..' or '.' parts"), ("a/./b.txt", "'..' or '.' parts"), ("a//b.txt", "an empty part"),
    ("bad\x00name.txt", "control characters"), ("line\nbreak.txt", "control characters"), ("x" * 2000, "a name of 2000 bytes"),
])
def test_names_are_checked_as_text_before_anything_is_opened(name, found, monkeypatch):
    from types import SimpleNamespace

    from zimage_pack.loaders import confined_paths

    asked = lambda *a, **k: pytest.fail("the file system was asked")  # noqa: E731
    monkeypatch.setattr(confined_paths, "os", SimpleNamespace(path=SimpleNamespace(isabs=os.path.isabs, realpath=asked, lexists=asked, join=asked)))
    with pytest.raises(ZImageInputError) as err:
        resolve_inside(["/nonexistent"], name, "file", "ComfyUI's input folder")
    assert str(err.value).startswith("file: found ") and found in str(err.value)


def test_the_input_list_leaves_out_links_that_leave_and_hidden_files(folders):
    (folders["input"] / ".secret.txt").write_text("x")
    assert comfy_services.input_files((".txt",)) == ["prompts.txt"]


@pytest.mark.parametrize("prefix, found", [
    ("..", "'..' or '.' parts"), ("", "an empty name"), ("../up/z", "'..' or '.' parts"), ("/tmp/z", "an absolute path"),
    ("line\nbreak", "control characters"), ("nul\x00byte", "control characters"), ("x" * 5000, "a name of 5000 bytes"),
    ("x" * 300, "a name of 300 bytes"), (".hidden", "a hidden file or folder"), ("ok/.hidden/z", "a hidden file or folder"),
    ("what?", "characters file systems refuse"), (" z", "a space at the start or end"),
])
def test_bad_output_prefixes_are_refused_with_the_packs_error(prefix, found, tmp_path, monkeypatch):
    monkeypatch.setenv("ZIMAGE_OUTPUT_DIR", str(tmp_path))
    with pytest.raises(ZImageInputError) as err:
        comfy_services.output_image_path(prefix, 8, 8, "png")
    assert found in str(err.value) and str(tmp_path) not in str(err.value) and len(str(err.value)) < 600
    assert list(tmp_path.iterdir()) == []


def test_a_good_prefix_with_a_subfolder_still_saves_there(tmp_path, monkeypatch):
    monkeypatch.setenv("ZIMAGE_OUTPUT_DIR", str(tmp_path))
    path, subfolder, name = comfy_services.output_image_path("people/z-image", 8, 8, "png")
    assert path == str(tmp_path / "people" / "z-image_00001_.png") and subfolder == "people" and check_output_prefix("people/z-image") == "people/z-image"


def test_an_output_subfolder_that_is_a_link_out_is_refused(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "escape")
    monkeypatch.setenv("ZIMAGE_OUTPUT_DIR", str(tmp_path / "out"))
    with pytest.raises(ZImageInputError, match="a link that leads out of"):
        comfy_services.output_image_path("escape/z", 8, 8, "png")


# bad files -----------------------------------------------------------------------------------------

def _prompt_file(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name, data, fragments", [
    ("deep.jsonl", b'{"prompt": "a"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", ("line 2 of 'deep.jsonl': JSON nested 100000 levels deep",)),
    ("broken.jsonl", b'{"prompt": "a"}\n{"prompt": \n', ("line 2 of 'broken.jsonl' is not JSON",)),
    ("huge_field.csv", b"prompt\n" + b"a" * (10 * 2**20 // 2) + b"\n", ("huge_field.csv",)),
    ("bad_utf8.txt", b"a fox\na cat\n\xff\xfe not text\n", ("'bad_utf8.txt' with bytes that are not UTF-8 on line 3",)),
    ("nul.txt", b"a fox\nb\x00c\n", ("'nul.txt' with a NUL character on line 2",)),
    ("too_many.txt", b"p\n" * (MAX_PROMPT_ROWS + 1), (f"{MAX_PROMPT_ROWS + 1} prompts", f"at most {MAX_PROMPT_ROWS}")),
    ("too_big.txt", b"a fox\n" * (MAX_PROMPT_FILE_BYTES // 6 + 1), ("of 8.0 MiB", "at most 8 MiB")),
    ("long_prompt.jsonl", json.dumps({"prompt": "x" * 70_000}).encode() + b"\n", ("70000 characters",)),
    ("negative_object.jsonl", b'{"prompt": "a", "negative": {"x": 1}}\n', ("a dict as its negative",)),
])
def test_every_bad_prompt_file_gets_the_packs_error(tmp_path, name, data, fragments):
    path = _prompt_file(tmp_path, name, data)
    with pytest.raises(ZImageInputError) as err:
        read_prompt_file(path, shown_name=name)
    text = str(err.value)
    assert str(tmp_path) not in text and len(text) < 800
    for fragment in fragments:
        assert fragment in text, text


def test_a_picture_with_a_deeply_nested_prompt_chunk_or_no_picture_at_all(tmp_path):
    info = PngInfo()
    info.add_text("prompt", "[" * 100_000 + "]" * 100_000)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "deep.png", pnginfo=info)
    with pytest.raises(ZImageInputError, match="the 'prompt' text of 'deep.png': JSON nested 100000 levels deep"):
        read_metadata(str(tmp_path / "deep.png"), shown_name="deep.png")
    (tmp_path / "fake.png").write_text(SECRET)
    text = _refused(lambda: read_metadata(str(tmp_path / "fake.png"), shown_name="fake.png"), "'fake.png', which cannot be read as a picture")
    assert str(tmp_path) not in text


# no list and no latent bigger than the machine ------------------------------------------------------

@pytest.fixture()
def host_with_4_gib(monkeypatch):
    monkeypatch.setattr(memory_budget, "host_available", lambda: 4 * 2**30)  # budget: half of it


def test_an_empty_latent_bigger_than_the_host_is_refused(host_with_4_gib):
    with pytest.raises(ZImageInputError) as err:
        memory_budget.check_latent_fits(16384, 16384, 64)
    assert "16384×16384 × batch 64: a latent of ~16.0 GiB" in str(err.value) and "batch_size 8 fits at this size" in str(err.value)
    memory_budget.check_latent_fits(1024, 1024, 4)


def test_a_prompt_list_bigger_than_the_host_is_refused_before_it_is_multiplied_out(host_with_4_gib):
    lines = [f"prompt number {i}, a red fox in snow" for i in range(10_000)]
    with pytest.raises(ZImageInputError) as err:
        memory_budget.check_prompts_fit(lines, "prompts, file, repeat", 1000)
    text = str(err.value)
    assert "10000 prompts × repeat 1000" in text and "at most about" in text and "Nothing was encoded" in text
    most = int(text.split("at most about ")[1].split()[0])
    assert 1000 < most < 10_000 * 1000
    memory_budget.check_prompts_fit(["a", "b"], "prompts, file, repeat", 3)


def test_encodings_are_estimated_at_most_one_token_per_byte_and_512_per_prompt():
    assert memory_budget.text_tokens_upper_bound("") == 13 and memory_budget.text_tokens_upper_bound("x" * 100) == 113
    assert memory_budget.text_tokens_upper_bound("x" * 10_000) == 512
