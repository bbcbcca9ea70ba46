"""The README's main command: headless text-to-image that writes a PNG (demo models and given files)."""

import importlib.util
import os

import numpy as np
from PIL import Image

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "txt2img.py")


def _script():
    spec = importlib.util.spec_from_file_location("txt2img", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_demo_run_writes_png(tmp_path, tokenizer_dir):
    out = tmp_path / "demo.png"
    path = _script().main(["--out", str(out), "--width", "64", "--height", "48", "--random-demo", "--demo-dir", str(tmp_path / "demo"), "--tokenizer", tokenizer_dir])
    image = np.asarray(Image.open(path))
    assert path == str(out) and image.shape == (48, 64, 3)
    assert image.std() > 0  # a real decode, not a blank canvas


def test_with_no_weights_the_toy_model_draws_the_prompt_in_8_and_in_2_steps(tmp_path, tokenizer_dir):
    from zimage_pack.train import toy_world

    out = tmp_path / "circle.png"
    path = _script().main(["--prompt", "a red circle on a blue background", "--out", str(out), "--tokenizer", tokenizer_dir])
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
