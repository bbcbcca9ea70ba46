"""Prompt lists and seed sweeps (samplers/prompt_list.py): files, seed modes, one encoding per distinct
prompt, interrupt keeping what is done. The nodes on them run in ComfyUI: tests/in_comfyui/test_nodes.py
(flat memory, metadata per picture, cancel) and the example workflow in tests/test_comfyui_api.py."""

import pytest

from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.samplers.prompt_list import PromptItem, assign_seeds, parse_prompt_lines, read_prompt_file, run_items


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
