"""zimage-distill data-parallel in the toy world, on this machine, in one run (issue 22):

- samples per second of one process with one thread against two processes with one thread each
  (accelerate launch, gloo), at the same global batch. Goal: ≥ 1.6×.
- the gap closed (the toy-world score of bench/distill_toy.py: held-out scenes, unseen seeds, distance to
  the teacher's 8-step latents) after the same number of samples seen. Goal: the two-process student
  within 2 points of the one-process student.

Both runs are the `zimage-distill` command on the packaged toy teacher (train/toy_model), from the same
teacher cache (made once, copied in); the times are the trainer's own (train_log.jsonl), the cache not counted.

    python bench/distill_parallel.py [--steps 150] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def train(out: str, prompts: str, args, processes: int, scratch: str) -> float:
    """Samples per second of the training (the trainer's own clock)."""
    from zimage_pack.train import toy_world
    from zimage_pack.train.toy_models import toy_paths

    paths = toy_paths()
    command = ["-m", "zimage_pack.train.cli", "--teacher", paths["transformer"], "--text-encoder", paths["text_encoder"], "--tokenizer", paths["tokenizer"],
               "--prompts", prompts, "--out", out, "--width", str(toy_world.SIZE), "--height", str(toy_world.SIZE),
               "--samples-per-prompt", str(args.samples_per_prompt), "--batch", str(args.batch), "--rank", str(args.rank), "--steps", str(args.steps),
               "--lr", str(args.lr), "--lr-disc", "1e-3", "--w-adv", str(args.w_adv), "--w-step1", "0.1", "--checkpoint-every", str(args.steps), "--seed", "0"]
    if processes > 1:
        command = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--main_process_port", "0", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": scratch}
    subprocess.run([sys.executable, *command], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"), encoding="utf-8")]
    return args.steps * args.batch / log[-1]["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32, help="the global batch (both runs)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--w-adv", type=float, default=0.02)
    parser.add_argument("--samples-per-prompt", type=int, default=16)
    parser.add_argument("--seeds-per-scene", type=int, default=4)
    args = parser.parse_args()

    import torch

    from zimage_pack.loaders.lora_merge import prepare_lora
    from zimage_pack.loaders.step_decoupled import from_models
    from zimage_pack.loaders.text_encoder import encode_prompts, load_text_encoder
    from zimage_pack.loaders.transformer import load_transformer
    from zimage_pack.loaders.vae import load_vae
    from zimage_pack.train import toy_eval as ev
    from zimage_pack.train import toy_world as world
    from zimage_pack.train.distill import DistillConfig, build_cache, files_identity
    from zimage_pack.train.toy_models import toy_paths

    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="zimage-bench-distill-parallel-")
    try:
        scratch = os.path.join(work, "scratch")
        os.makedirs(scratch)
        prompts = os.path.join(work, "prompts.txt")
        with open(prompts, "w", encoding="utf-8") as handle:
            handle.writelines(s.prompt + "\n" for s in world.TRAIN_SCENES)
        paths = toy_paths()
        encoder = load_text_encoder(paths["text_encoder"], paths["tokenizer"], compute_dtype="fp32")
        encode = lambda prompt: encode_prompts(encoder, [prompt])[0]  # noqa: E731
        teacher = load_transformer(paths["transformer"], compute_dtype="fp32")
        # the teacher cache once, as the command would make it (same key), copied into both runs
        config = DistillConfig(out=os.path.join(work, "cache"), prompts=[s.prompt for s in world.TRAIN_SCENES], width=world.SIZE, height=world.SIZE,
                               samples_per_prompt=args.samples_per_prompt, batch=args.batch, seed=0, models=files_identity(paths["transformer"], paths["text_encoder"]))
        build_cache(config, teacher.module, encode, log=lambda *a: None)
        speeds, students = {}, {}
        for processes in (1, 2):
            out = os.path.join(work, f"p{processes}")
            os.makedirs(out)
            shutil.copy(os.path.join(work, "cache", "teacher_cache.safetensors"), out)
            speeds[processes] = train(out, prompts, args, processes, scratch)
            students[processes] = {s: os.path.join(out, f"{s}_lora.safetensors") for s in ("step1", "step2")}

        vae = load_vae(paths["vae"], compute_dtype="fp32")
        settings = config.settings()
        cases = ev.eval_set(world.HELD_OUT, args.seeds_per_scene)
        reference = ev.draw_all(ev.turbo(teacher, 8), encode, vae, cases)
        two_steps = ev.score(*ev.draw_all(ev.two_step(ev.teacher_in_two(teacher), settings), encode, vae, cases), cases, reference)
        gaps = {}
        for processes, loras in students.items():
            student = from_models(*[teacher.with_lora(prepare_lora(teacher.module, loras[s], 1.0)[0]) for s in ("step1", "step2")])
            score = ev.score(*ev.draw_all(ev.two_step(student, settings), encode, vae, cases), cases, reference)
            gaps[processes] = (two_steps.latent_distance - score.latent_distance) / two_steps.latent_distance
        print(f"toy world, {args.steps} steps × global batch {args.batch} = {args.steps * args.batch} samples seen, one thread per process")
        print(f"  one process:   {speeds[1]:7.1f} samples/s   gap closed {gaps[1]:6.1%}")
        print(f"  two processes: {speeds[2]:7.1f} samples/s   gap closed {gaps[2]:6.1%}")
        ratio, points = speeds[2] / speeds[1], 100 * abs(gaps[2] - gaps[1])
        print(f"  speed-up {ratio:.2f}× (goal ≥ 1.6×: {'met' if ratio >= 1.6 else 'NOT met'}); "
              f"gap closed differs by {points:.2f} points (goal ≤ 2: {'met' if points <= 2 else 'NOT met'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
