"""Turbo++ distillation proven in the toy world (issue 10), on the CPU.

The toy teacher (train/toy_model: a tiny Z-Image trained on coloured shapes) is distilled into a
2-step student with zimage-distill's Trainer; the student, the teacher in 8 steps and the teacher in 2
steps draw the held-out prompts (scenes the distillation never saw) with unseen seeds through the
pack's own samplers; pictures are judged on their pixels.

Goal: the student closes ≥ 70 % of the gap between the teacher in 2 steps and in 8 steps, within ≤ 30
CPU minutes of training. The gap is measured as the distance to the teacher's 8-step latents (the
teacher in 8 steps is at 0) and, beside it, as the fraction of pictures that are right.
Ablations with the same step budget: no adversarial term, no step-1 loss, one shared LoRA, and (main_blocks)
the LoRA on the main blocks only.

    python bench/distill_toy.py [--steps 600] [--configs full,no_adv,no_step1,shared,main_blocks] [--save-toy-loras]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import torch

from zimage_pack.train.distill import MAIN_BLOCK_TARGETS

CONFIGS = {
    "full": {},
    "no_adv": {"w_adv": 0.0},
    "no_step1": {"w_step1": 0.0},
    "shared": {"decoupled": False},
    "main_blocks": {"lora_targets": MAIN_BLOCK_TARGETS},  # not in the default list: the LoRA on the main blocks only
}
DEFAULT_CONFIGS = "full,no_adv,no_step1,shared"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--w-adv", type=float, default=0.02)
    parser.add_argument("--w-step1", type=float, default=0.1)
    parser.add_argument("--seeds-per-scene", type=int, default=4)
    parser.add_argument("--samples-per-prompt", type=int, default=64, help="teacher samples (noises) per training prompt")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "zimage_distill_bench"))
    parser.add_argument("--save-toy-loras", action="store_true", help="copy the full configuration's LoRAs into train/toy_model/")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from zimage_pack.loaders.lora_merge import prepare_lora
    from zimage_pack.loaders.step_decoupled import from_models
    from zimage_pack.loaders.text_encoder import encode_prompts, load_text_encoder
    from zimage_pack.loaders.transformer import load_transformer
    from zimage_pack.loaders.vae import load_vae
    from zimage_pack.train import toy_eval as ev
    from zimage_pack.train import toy_world as world
    from zimage_pack.train.distill import DistillConfig, Trainer
    from zimage_pack.train.outputs import write_loras
    from zimage_pack.train.toy_models import TOY_DIR, toy_paths

    paths = toy_paths()
    encoder = load_text_encoder(paths["text_encoder"], paths["tokenizer"], compute_dtype="fp32")
    encode = lambda prompt: encode_prompts(encoder, [prompt])[0]  # noqa: E731
    vae = load_vae(paths["vae"], compute_dtype="fp32")
    teacher = load_transformer(paths["transformer"], compute_dtype="fp32")
    settings = DistillConfig(out="", prompts=[]).settings()
    cases = ev.eval_set(world.HELD_OUT, args.seeds_per_scene)
    print(f"held-out: {len(world.HELD_OUT)} scenes × {args.seeds_per_scene} seeds = {len(cases)} pictures; "
          f"distillation trains on the other {len(world.TRAIN_SCENES)} scenes")

    reference = ev.draw_all(ev.turbo(teacher, 8), encode, vae, cases)
    rows = {"teacher, 8 steps": ev.score(*reference, cases, reference),
            "teacher, 2 steps": ev.score(*ev.draw_all(ev.two_step(ev.teacher_in_two(teacher), settings), encode, vae, cases), cases, reference)}
    timings = {}
    shared_cache = None
    for name in args.configs.split(","):
        out = os.path.join(args.out, name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        if shared_cache and os.path.exists(shared_cache):  # the teacher's samples are the same for every configuration
            shutil.copy(shared_cache, os.path.join(out, "teacher_cache.safetensors"))
        module = load_transformer(paths["transformer"], compute_dtype="fp32").module
        options = dict(out=out, prompts=[s.prompt for s in world.TRAIN_SCENES], width=world.SIZE, height=world.SIZE, samples_per_prompt=args.samples_per_prompt,
                       steps=args.steps, batch=args.batch, rank=args.rank, lr=args.lr, lr_disc=1e-3, w_adv=args.w_adv, w_step1=args.w_step1,
                       checkpoint_every=max(50, args.steps), seed=0)
        config = DistillConfig(**{**options, **CONFIGS[name]})
        cache_start = time.process_time()
        trainer = Trainer(config, module, encode, log=lambda *a: None)
        if not shared_cache:
            print(f"  teacher cache ({len(world.TRAIN_SCENES)} prompts × {args.samples_per_prompt} samples, 8 steps): {time.process_time() - cache_start:.0f} CPU-s")
        shared_cache = shared_cache or os.path.join(out, "teacher_cache.safetensors")
        start = time.process_time()
        wall = time.perf_counter()
        log = trainer.train(progress=False)
        timings[name] = (time.process_time() - start, time.perf_counter() - wall)
        loras = write_loras(trainer.lora_states(), out, config)
        student = from_models(*[teacher.with_lora(prepare_lora(teacher.module, loras[s], 1.0)[0]) for s in ("step1", "step2")])
        rows[f"student: {name}"] = ev.score(*ev.draw_all(ev.two_step(student, settings), encode, vae, cases), cases, reference)
        accuracy = [e["disc_acc"] for e in log if "disc_acc" in e]
        if accuracy:
            print(f"  {name}: discriminator accuracy first 50 steps {sum(accuracy[:50]) / len(accuracy[:50]):.2f}, last 50 {sum(accuracy[-50:]) / len(accuracy[-50:]):.2f}")
        if name == "full" and args.save_toy_loras:
            for step, path in loras.items():
                shutil.copy(path, os.path.join(TOY_DIR, os.path.basename(path)))
            print(f"  copied the full configuration's LoRAs into {TOY_DIR}")

    t8, t2 = rows["teacher, 8 steps"], rows["teacher, 2 steps"]
    print(f"\n{'':22s} {'right':>7s} {'latent dist':>12s} {'pixel RMSE':>11s} {'gap closed (dist)':>18s} {'gap closed (right)':>19s} {'train CPU s':>12s}")
    results = {}
    for name, s in rows.items():
        gap_d = (t2.latent_distance - s.latent_distance) / t2.latent_distance if t2.latent_distance else float("nan")
        # the fraction right only makes a gap when the 8-step teacher is the better one
        gap_r = (s.right - t2.right) / (t8.right - t2.right) if t8.right > t2.right else float("nan")
        key = name.split(": ")[-1]
        cpu = f"{timings[key][0]:.0f}" if key in timings else ""
        print(f"{name:22s} {s.right:7.2%} {s.latent_distance:12.4f} {s.pixel_rmse:11.1f} {gap_d:18.1%} {gap_r:19.1%} {cpu:>12s}")
        results[name] = {**vars(s), "gap_closed_distance": gap_d, "gap_closed_right": gap_r, "train_cpu_seconds": timings.get(key, (None,))[0],
                         "train_wall_seconds": timings.get(key, (None, None))[1]}
    full = results.get("student: full")
    if full:
        minutes = full["train_cpu_seconds"] / 60  # CPU time of the training process (all its threads), the teacher cache not counted
        print(f"\ngoal: the full student closes ≥ 70 % of the gap in ≤ 30 CPU minutes: {full['gap_closed_distance']:.1%} of the distance gap "
              f"in {minutes:.1f} CPU minutes ({full['train_wall_seconds'] / 60:.1f} min wall) → "
              f"{'met' if full['gap_closed_distance'] >= 0.7 and minutes <= 30 else 'NOT met'}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
