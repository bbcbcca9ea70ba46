"""``zimage-distill``: distil an 8-step Z-Image-Turbo (or a fine-tune, or Turbo + a LoRA merged into it)
into a 2-step step-decoupled model: per-step LoRAs plus a bundle the pack's 2-step nodes run.

    zimage-distill --teacher z_image_turbo_bf16.safetensors --text-encoder qwen_3_4b.safetensors \\
        --prompts prompts.txt --out runs/turbo2 --steps 3000 --rank 32        # run again to resume
    accelerate launch --multi_gpu --num_processes 8 -m zimage_pack.train.cli …  # data-parallel: the same training

Outputs in --out: step1_lora.safetensors, step2_lora.safetensors (diffusers/PEFT naming), the bundle
z_image_2step_bundle.safetensors (copy it into models/zimage_bundles/), train_log.jsonl, checkpoint/
(accelerate's state), teacher_cache.safetensors (the teacher's samples, made once). Under accelerate,
--batch is the global batch (split among the processes) and --out must be a folder every process sees."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from .distill import DistillConfig, Trainer, files_identity
from .outputs import write_bundle, write_loras, write_summary

BUNDLE_NAME = "z_image_2step_bundle.safetensors"


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step number (1 or more)")
    return int(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="zimage-distill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="the 8-step transformer: any file the pack's loader reads")
    p.add_argument("--text-encoder", required=True, help="Qwen3-4B (qwen_3_4b.safetensors, fp8_mixed, GGUF or a diffusers folder)")
    p.add_argument("--tokenizer", default=None, help="folder with vocab.json + merges.txt (default: ZIMAGE_TOKENIZER_DIR or ComfyUI's qwen25_tokenizer)")
    p.add_argument("--prompts", required=True, help="a .txt (one per line), .csv or .jsonl file with a 'prompt' column")
    p.add_argument("--out", required=True)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--samples-per-prompt", type=int, default=4, help="teacher samples (noises) per prompt in the cache")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=4, help="the global batch: split among the processes accelerate launched (a multiple of their number)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-disc", type=float, default=1e-4)
    p.add_argument("--w-final", type=float, default=1.0)
    p.add_argument("--w-step1", type=float, default=0.1)
    p.add_argument("--w-adv", type=float, default=0.05)
    p.add_argument("--adv-start", type=int, default=0)
    p.add_argument("--shared-lora", action="store_true", help="one LoRA for both steps (not step-decoupled; an ablation)")
    p.add_argument("--sigma-mid", type=float, default=0.5)
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--step2-rule", choices=("euler", "x0_renoise"), default="euler")
    p.add_argument("--teacher-steps", type=int, default=8)
    p.add_argument("--weight-dtype", default="default", help="the frozen base: default (as stored), bf16, fp32 or fp8_e4m3fn")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--stop-after", type=_positive, default=None, help="stop at this step with a checkpoint, without outputs (a time-boxed job); run again to go on")
    return p.parse_args(argv)


def config_from_args(args, prompts: list[str]) -> DistillConfig:
    return DistillConfig(out=args.out, prompts=prompts, width=args.width, height=args.height, samples_per_prompt=args.samples_per_prompt,
                         steps=args.steps, batch=args.batch, rank=args.rank, lr=args.lr, lr_disc=args.lr_disc, w_final=args.w_final,
                         w_step1=args.w_step1, w_adv=args.w_adv, adv_start=args.adv_start, decoupled=not args.shared_lora,
                         teacher_steps=args.teacher_steps, shift=args.shift, sigma_mid=args.sigma_mid, step2_rule=args.step2_rule,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing,
                         models=files_identity(args.teacher, args.text_encoder))


def load_models(teacher: str, text_encoder: str, tokenizer: str, weight_dtype: str, device: torch.device):
    """(the teacher's diffusers module, float32 adapters go on it; encode(prompt) → features)."""
    from ..loaders.text_encoder import encode_prompts, load_text_encoder
    from ..loaders.transformer import load_transformer

    compute = "fp32" if device.type == "cpu" else "auto"
    encoder = load_text_encoder(text_encoder, tokenizer, compute_dtype=compute, device=device)
    encoder.model.to(device)
    loaded = load_transformer(teacher, weight_dtype=weight_dtype, compute_dtype=compute, device=device)
    loaded.module.to(device)
    return loaded.module, lambda prompt: encode_prompts(encoder, [prompt])[0].to(device)


def run(args) -> dict:
    from ..samplers.prompt_list import read_prompt_file
    from .parallel import Processes

    processes = Processes.start()  # one process, or this one's place in what accelerate launched
    logging.basicConfig(level=logging.INFO if processes.main else logging.WARNING, format="%(message)s")
    say = (lambda line: print(line, file=sys.stderr)) if processes.main else (lambda line: None)
    prompts = [item.prompt for item in read_prompt_file(args.prompts)]
    if not prompts:
        raise SystemExit(f"{args.prompts}: no prompts")
    tokenizer = args.tokenizer or os.environ.get("ZIMAGE_TOKENIZER_DIR", "")
    if not tokenizer:
        raise SystemExit("give --tokenizer (a folder with vocab.json and merges.txt) or set ZIMAGE_TOKENIZER_DIR")
    if args.batch % processes.count:
        raise SystemExit(f"--batch {args.batch} is the global batch and does not divide among {processes.count} processes: use a multiple of {processes.count}")
    if processes.accelerator.mixed_precision != "no":
        say(f"accelerate's mixed_precision={processes.accelerator.mixed_precision} is not used: the trainer computes in the teacher's"
            " compute dtype (bf16 on a GPU) with float32 adapters; --weight-dtype sets the frozen base")
    config = config_from_args(args, prompts)
    os.makedirs(args.out, exist_ok=True)
    module, encode = load_models(args.teacher, args.text_encoder, tokenizer, args.weight_dtype, processes.device)
    trainer = Trainer(config, module, encode, log=say, processes=processes)
    if processes.count > 1:
        say(f"{processes.count} processes, {args.batch // processes.count} samples each per step (global batch {args.batch})")
    trainer.train(until=min(args.stop_after, config.steps) if args.stop_after else None, progress=processes.main)
    result = {"log": trainer.state.log, "step": trainer.state.step}
    if trainer.state.step < config.steps:
        say(f"stopped at step {trainer.state.step} of {config.steps} (checkpoint in {trainer.checkpoint_path}); run again to go on")
    elif processes.main:  # the LoRAs, the bundle and the summary: written once
        loras = write_loras(trainer.lora_states(), args.out, config)
        counts = write_bundle(args.teacher, loras, os.path.join(args.out, BUNDLE_NAME), config.settings(), args.weight_dtype)
        write_summary(args.out, config, counts)
        say(f"wrote {loras['step1']}, {loras['step2']} and {os.path.join(args.out, BUNDLE_NAME)}")
        result.update(loras=loras, bundle=os.path.join(args.out, BUNDLE_NAME))
    processes.wait()
    return result


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
