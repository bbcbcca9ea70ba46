"""The README's main command: headless text-to-image that writes a PNG (demo models and given files)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "txt2img.py")


def _script():
    spec = importlib.util.spec_from_file_location("txt2img", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_demo_run_writes_png(tmp_path):
    out = tmp_path / "demo.png"
    path = _script().main(["--out", str(out), "--width", "64", "--height", "48", "--random-demo", "--demo-dir", str(tmp_path / "demo")])
    image = np.asarray(Image.open(path))
    assert path == str(out) and image.shape == (48, 64, 3)
    assert image.std() > 0  # a real decode, not a blank canvas


def test_with_no_weights_the_toy_model_draws_the_prompt_in_8_and_in_2_steps(tmp_path, monkeypatch):
    from zimage_pack.train import toy_world

    monkeypatch.delenv("ZIMAGE_TOKENIZER_DIR", raising=False)  # the toy model's own tokenizer, nothing from outside
    out = tmp_path / "circle.png"
    path = _script().main(["--prompt", "a red circle on a blue background", "--out", str(out)])
    eight = np.asarray(Image.open(path))
    two = np.asarray(Image.open(tmp_path / "circle_2step.png"))
    assert eight.shape == two.shape == (64, 64, 3)
    truth = toy_world.Scene("circle", "red", "blue")
    assert toy_world.judge(eight) == truth and toy_world.judge(two) == truth


def test_run_with_given_files_is_seed_reproducible(tmp_path, model_files, tokenizer_dir):
    args = ["--transformer", model_files["comfy"], "--text-encoder", model_files["te_comfy"], "--vae", model_files["vae_bfl"],
            "--tokenizer", tokenizer_dir, "--width", "32", "--height", "32", "--seed", "9"]
    first = _script().main(args + ["--out", str(tmp_path / "a.png")])
    second = _script().main(args + ["--out", str(tmp_path / "b.png")])
    third = _script().main(args[:-1] + ["10", "--out", str(tmp_path / "c.png")])
    a, b, c = (np.asarray(Image.open(p)) for p in (first, second, third))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_diffusers_folder_run(tmp_path, model_files):
    folder = os.path.dirname(model_files["diffusers_folder"])
    path = _script().main(["--diffusers-folder", folder, "--width", "32", "--height", "32", "--out", str(tmp_path / "d.png")])
    assert Image.open(path).size == (32, 32)


def _cli(args, capsys) -> tuple[int, str, str]:
    status = _script().cli(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("args, flag, says", [
    (["--width", "100"], "--width", "got 100; expected a multiple of 16 from 16 to 16384 (use 96)"),
    (["--height", "99999"], "--height", "got 99999; expected a multiple of 16 from 16 to 16384 (use 16384)"),
    (["--steps", "0"], "--steps", "got 0; expected 1 to 200"),
    (["--steps", "eight"], "--steps", "got 'eight'; expected a whole number"),
    (["--batch-size", "1000"], "--batch-size", "got 1000; expected 1 to 64"),
    (["--seed", "-1"], "--seed", "got -1; expected a whole number from 0"),
    (["--weight-dtype", "int4"], "--weight-dtype", "invalid choice: 'int4'"),
    (["--transformer", "/no/such/z_image.safetensors"], "--transformer", "no file or folder '/no/such/z_image.safetensors'"),
    (["--tokenizer", "/no/such/tokenizer"], "--tokenizer", "no file or folder '/no/such/tokenizer'"),
])
def test_bad_flags_get_one_line_naming_the_flag(args, flag, says, capsys):
    status, _, err = _cli(args, capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith(f"scripts/run.sh: {flag}") and says in err, err
    assert "Traceback" not in err and "custom_validation_failed" not in err


def test_some_files_but_not_all_names_the_missing_flags(model_files, capsys):
    status, _, err = _cli(["--transformer", model_files["comfy"]], capsys)
    assert status == 2 and err.startswith("scripts/run.sh: --text-encoder, --vae: missing;") and err.count("\n") == 1


def test_real_weights_without_a_tokenizer_list_the_places_looked_at(model_files, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("ZIMAGE_TOKENIZER_DIR", raising=False)
    status, _, err = _cli(["--transformer", model_files["comfy"], "--text-encoder", model_files["te_comfy"], "--vae", model_files["vae_bfl"],
                           "--out", str(tmp_path / "x.png")], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "--tokenizer: not given" in err and "ZIMAGE_TOKENIZER_DIR: not given" in err and "How to fix: pass --tokenizer DIR" in err


@pytest.mark.parametrize("prompt, named", [("a purple hexagon on a blue background", "'purple', 'hexagon'"), ("", "no shape and two colours")])
def test_a_prompt_the_toy_model_cannot_draw_is_warned_about_then_drawn(prompt, named, tmp_path, capsys):
    status, out, _ = _cli(["--prompt", prompt, "--out", str(tmp_path / "x.png")], capsys)
    assert status == 0 and (tmp_path / "x.png").is_file() and (tmp_path / "x_2step.png").is_file()
    assert "warning: the toy model cannot draw this prompt: " in out and named in out
    assert "a <colour> <shape> on a <colour> background" in out


def test_the_command_prints_no_traceback(tmp_path):
    """The script as run.sh runs it, in its own process."""
    done = subprocess.run([sys.executable, SCRIPT, "--width", "100", "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == ["scripts/run.sh: --width: got 100; expected a multiple of 16 from 16 to 16384 (use 96)"]
