"""zimage-distill data-parallel under accelerate, on the CPU with two processes (gloo), in the toy world
(train/toy_model: the packaged toy teacher): the same LoRAs as one process with the same global batch,
a two-process checkpoint resumed in one process equal to the uninterrupted run, and the teacher cache made
by two processes equal, bit for bit, to the one made by one.

Tolerance: two processes average two half-batch means where one process takes one mean over the whole
batch, and the all-reduce adds in its own order: float32 rounding. Measured over these 4 steps: the
LoRAs differ by 1.5e-7 and 3.7e-7 of their norm, 1.5e-6 at most in any weight (the LoRA weights are
~1e-2), and the logged losses agree to 6 digits. Allowed: 1e-5 of the norm, 1e-5 in any weight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from zimage_pack.train import toy_world
from zimage_pack.train.toy_models import toy_paths

TOLERANCE = 1e-5  # of the LoRA's norm, and in any single weight


def _command(prompts: str, out, *more) -> list[str]:
    paths = toy_paths()
    return ["-m", "zimage_pack.train.cli", "--teacher", paths["transformer"], "--text-encoder", paths["text_encoder"], "--tokenizer", paths["tokenizer"],
            "--prompts", prompts, "--out", str(out), "--width", str(toy_world.SIZE), "--height", str(toy_world.SIZE), "--samples-per-prompt", "2",
            "--batch", "4", "--rank", "4", "--steps", "4", "--checkpoint-every", "2", "--lr", "3e-3", "--w-adv", "0.05", "--seed", "3", *more]


def _run(arguments: list[str], processes: int, scratch) -> subprocess.CompletedProcess:
    # scratch: the launcher's temporary folders (torchelastic_*) go there, not into the machine's /tmp
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)}
    if processes == 1:
        command = [sys.executable, *arguments]
    else:  # what a user types; on a machine without a GPU accelerate's processes run on the CPU with gloo
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", *arguments]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command[:8])} … failed:\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    prompts = root / "prompts.txt"
    prompts.write_text("".join(s.prompt + "\n" for s in toy_world.TRAIN_SCENES[:3]))  # 3 prompts: two processes make 2 and 1
    one, two, resumed, scratch = root / "one", root / "two", root / "resumed", root / "scratch"
    scratch.mkdir()
    logs = {"one": _run(_command(str(prompts), one), 1, scratch).stderr, "two": _run(_command(str(prompts), two), 2, scratch).stderr}
    _run(_command(str(prompts), resumed, "--stop-after", "2"), 2, scratch)  # two processes to step 2 …
    partial = sorted(os.listdir(resumed)) + sorted("checkpoint/" + name for name in os.listdir(resumed / "checkpoint"))
    logs["resumed"] = _run(_command(str(prompts), resumed), 1, scratch).stderr  # … then one process to the end
    return {"one": one, "two": two, "resumed": resumed, "logs": logs, "partial": partial}


def _lora_close(a: str, b: str) -> float:
    """The larger of the two differences the tolerance bounds: relative to the whole LoRA's norm, and in any weight."""
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    squares = sum((first[k] - second[k]).double().pow(2).sum() for k in first)
    norm = sum(first[k].double().pow(2).sum() for k in first)
    largest = max((first[k] - second[k]).abs().max().item() for k in first)
    return max((squares / norm).sqrt().item(), largest)


def test_two_processes_give_the_loras_of_one_with_the_same_global_batch(runs):
    assert "2 processes, 2 samples each per step (global batch 4)" in runs["logs"]["two"]
    for step in ("step1", "step2"):
        difference = _lora_close(runs["one"] / f"{step}_lora.safetensors", runs["two"] / f"{step}_lora.safetensors")
        assert difference < TOLERANCE, (step, difference)
        assert load_file(runs["one"] / f"{step}_lora.safetensors") != {}
    untrained = {k: v for k, v in load_file(runs["one"] / "step1_lora.safetensors").items() if "lora_B" in k}
    assert any(v.abs().max() > 0 for v in untrained.values())  # B starts at 0: the runs did train
    one = [json.loads(line) for line in (runs["one"] / "train_log.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (runs["two"] / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in two] == [1, 2, 3, 4]  # one log, written once
    for a, b in zip(one, two):  # the losses and the discriminator's accuracy over the global batch
        for key in ("final", "step1", "gen", "disc", "disc_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert (runs["two"] / "z_image_2step_bundle.safetensors").exists() and not list(runs["two"].glob("teacher_cache.part*"))


def test_a_two_process_checkpoint_resumed_in_one_process_equals_the_uninterrupted_run(runs):
    assert "checkpoint" in runs["partial"] and "step1_lora.safetensors" not in runs["partial"]  # stopped at step 2: no outputs yet
    # accelerate's state: this trainer's (adapters, discriminator, optimisers, generator, step), each process's random state
    assert {"checkpoint/custom_checkpoint_0.pkl", "checkpoint/random_states_0.pkl", "checkpoint/random_states_1.pkl"} <= set(runs["partial"])
    assert "resumed at step 2" in runs["logs"]["resumed"]
    for step in ("step1", "step2"):
        assert _lora_close(runs["one"] / f"{step}_lora.safetensors", runs["resumed"] / f"{step}_lora.safetensors") < TOLERANCE
    assert len((runs["resumed"] / "train_log.jsonl").read_text().splitlines()) == 4


def test_the_cache_made_by_two_processes_is_the_one_made_by_one(runs):
    one, two = load_file(runs["one"] / "teacher_cache.safetensors"), load_file(runs["two"] / "teacher_cache.safetensors")
    assert one.keys() == two.keys() and {"noise", "x_mid", "x0", "prompt", "features.0", "features.1", "features.2"} <= set(one)
    for key in one:
        assert torch.equal(one[key], two[key]), key
    assert one["prompt"].tolist() == [0, 0, 1, 1, 2, 2]


def test_a_global_batch_that_does_not_divide_among_the_processes_is_refused():
    from zimage_pack.train.parallel import Processes

    class TwoProcesses:
        process_index, num_processes = 1, 2

    with pytest.raises(ValueError, match="the global batch 3 does not divide among 2 processes: make --batch a multiple of 2"):
        Processes(TwoProcesses()).share(3)
    assert Processes(TwoProcesses()).share(4) == slice(2, 4)


def test_the_one_process_trainer_resumes_a_checkpoint_of_the_trainer_before_accelerate(tmp_path):
    """An output folder of the one-process trainer (checkpoint.pt) resumes under the accelerate state."""
    from zimage_pack.loaders.text_encoder import encode_prompts, load_text_encoder
    from zimage_pack.loaders.transformer import load_transformer
    from zimage_pack.train.distill import DistillConfig, Trainer

    paths = toy_paths()
    encoder = load_text_encoder(paths["text_encoder"], paths["tokenizer"], compute_dtype="fp32")
    config = DistillConfig(out=str(tmp_path), prompts=[toy_world.TRAIN_SCENES[0].prompt], width=toy_world.SIZE, height=toy_world.SIZE,
                           samples_per_prompt=2, steps=3, batch=2, rank=4, checkpoint_every=10, seed=1)

    def trainer():
        return Trainer(config, load_transformer(paths["transformer"], compute_dtype="fp32").module, lambda p: encode_prompts(encoder, [p])[0], log=lambda *a: None)

    first = trainer()
    first.train(until=2, progress=False)
    torch.save(first.state_dict(), tmp_path / "checkpoint.pt")  # the old trainer's file held exactly this state
    shutil.rmtree(tmp_path / "checkpoint")
    resumed = trainer()
    assert resumed.state.step == 2
    for a, b in zip(first.params, resumed.params):
        assert torch.equal(a, b)
