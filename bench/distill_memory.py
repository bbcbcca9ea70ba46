"""Traced peak device memory of one zimage-distill training step at real size (dim 3840, 30 layers,
6.15 B parameters), with no GPU and no RAM: the model is built under torch's FakeTensorMode, the peft
adapters added as the trainer adds them (float32), and one whole step runs inside MemTracker: the
student's two steps with gradients kept through both, the discriminator's pass over the frozen
teacher's features (batch 2: real + fake), the backward and the optimiser step (AdamW on the adapters).

Configurations: frozen base bf16 or fp8 (a Comfy-Org fp8 file: float8_e4m3fn blocks, bf16 compute),
gradient checkpointing off/on, batch 1, 1024², LoRA rank 32, 512 caption tokens.

    python bench/distill_memory.py [--size 1024] [--rank 32] [--batch 1] [--processes 8 --configs bf16:on,fp8:on]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
CARDS = [("RTX 4080 / 4060 Ti (16 GB)", 16), ("RTX 4090 / 3090 (24 GB)", 24), ("A6000 / L40S (48 GB)", 48), ("A100 / H100 80 GB", 80), ("H200 (141 GB)", 141)]


def _fake_adapters(model, rank: int):
    """The trainer's two LoRA sets (rank ``rank``, float32, on the same layers) as forward hooks.
    peft cannot be used under FakeTensorMode (its adapter moves swap parameters, which fake tensors
    refuse); the memory is the same: two [rank, in] + [out, rank] float32 matrices per layer and the
    low-rank activations they keep for the backward."""
    import re

    from zimage_pack.train.distill import LORA_TARGETS

    active = {"name": "step1"}
    params = []
    for name, linear in model.named_modules():
        if isinstance(linear, torch.nn.Linear) and re.fullmatch(LORA_TARGETS, name):
            pairs = {step: (torch.nn.Parameter(torch.zeros(rank, linear.in_features)), torch.nn.Parameter(torch.zeros(linear.out_features, rank)))
                     for step in ("step1", "step2")}
            params += [p for pair in pairs.values() for p in pair]

            def hook(module, args, out, pairs=pairs):
                if active["name"] is None:
                    return out
                a, b = pairs[active["name"]]
                return out + ((args[0].float() @ a.t()) @ b.t()).to(out.dtype)

            linear.register_forward_hook(hook)

    from zimage_pack.train.distill import AdapterSwitch

    class Switch(AdapterSwitch):
        def __call__(self, step):
            active["name"] = self.current = step

    return params, Switch(model, params, True)


class _WholeStep(torch.nn.Module):
    """The step's forward as one module: MemTracker refuses a root module called twice (the student's
    two steps and the discriminator's pass all call the transformer); as a submodule it may be."""

    def __init__(self, model, disc, params, activate):
        super().__init__()
        self.model, self.disc, self.activate = model, disc, activate
        self.adapters = torch.nn.ParameterList(params)

    def forward(self, noise, target, features, batch):
        from zimage_pack.train.distill import student_run

        x0, x_mid, _ = student_run(self.model, noise, features, (1.0, 0.75), "euler", None, self.activate)
        loss = (x0 - target).pow(2).mean() + 0.5 * (x_mid - target).pow(2).mean()
        hidden = self.disc.features(self.model, torch.cat([target, x0]), torch.full((2 * batch,), 0.5), features + features, self.activate)
        return loss - 0.05 * self.disc.logits([h[batch:] for h in hidden]).mean()


def traced_step(base: str, checkpointing: bool, size: int, rank: int, batch: int, caption_tokens: int, processes: int = 1) -> tuple[float, float]:
    """(weights GiB, peak GiB) of one training step (of one of ``processes`` data-parallel processes, with
    ``batch`` its share: the gradients averaged as train/parallel.py does, one flat buffer reduced in place)."""
    from diffusers import ZImageTransformer2DModel
    from torch._subclasses.fake_tensor import FakeTensorMode
    from quantized_memory import _tracker  # MemTracker without grad hooks: the frozen base has no gradient to hook

    from zimage_pack.train.distill import Discriminator

    with FakeTensorMode():
        torch.set_default_dtype(torch.bfloat16)
        model = ZImageTransformer2DModel().requires_grad_(False)
        torch.set_default_dtype(torch.float32)
        if base == "fp8":
            # a Comfy-Org fp8 file as the loader holds it: the blocks' Linear weights float8 + scale, expanded
            # to bf16 per call (diffusers' layerwise casting, --weight-dtype fp8_e4m3fn, swaps .data,
            # which fake tensors refuse; it holds the same: fp8 at rest, one layer in bf16 at a time)
            from quantized_memory import _quantize_fake

            _quantize_fake(model, "fp8 scaled (float8_e4m3fn)", only_blocks=True)
        params, activate = _fake_adapters(model, rank)
        if checkpointing:  # as the trainer does: each block recomputed under the adapter it ran with
            model.enable_gradient_checkpointing(gradient_checkpointing_func=activate.checkpoint)
        disc = Discriminator(model.config.dim, (10, 20))
        optimiser = torch.optim.AdamW(params + list(disc.parameters()), lr=1e-4)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        latent = size // 8
        noise = torch.randn(batch, 16, latent, latent)
        target = torch.randn(batch, 16, latent, latent)
        features = [torch.randn(caption_tokens, 2560, dtype=torch.bfloat16) for _ in range(batch)]
        step = _WholeStep(model, disc, params, activate)
        tracker = _tracker()
        tracker.track_external(step, optimiser)
        with tracker:
            loss = step(noise, target, features, batch)
            loss.backward()
            if processes > 1:  # Processes.average_gradients: the all-reduce works in place on this buffer
                with_grad = [p for p in params + list(disc.parameters()) if p.grad is not None]
                flat = torch.cat([p.grad.reshape(-1) for p in with_grad]) / processes
                offset = 0
                for p in with_grad:
                    p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                    offset += p.numel()
                del flat
            optimiser.step()
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))["Total"]
    return weights / GIB, peak / GIB


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--caption-tokens", type=int, default=512)
    parser.add_argument("--configs", default="bf16:off,bf16:on,fp8:off,fp8:on", help="base:checkpointing pairs to trace")
    parser.add_argument("--processes", type=int, default=1, help="per GPU of a data-parallel run (accelerate launch): --batch is then each GPU's share")
    args = parser.parse_args()
    import zimage_pack  # noqa: F401

    print(f"one zimage-distill step, real size, {args.size}², batch {args.batch}{' per GPU of %d' % args.processes if args.processes > 1 else ''}, "
          f"rank {args.rank} (traced: FakeTensorMode + MemTracker)")
    print(f"{'frozen base':12s} {'checkpointing':14s} {'weights':>9s} {'peak':>9s}   smallest card")
    for pair in args.configs.split(","):
        base, checkpointing = pair.split(":")[0], pair.split(":")[1] == "on"
        weights, peak = traced_step(base, checkpointing, args.size, args.rank, args.batch, args.caption_tokens, args.processes)
        card = next((name for name, gb in CARDS if peak * 1.1 <= gb * 0.93), "more than 141 GB")  # 10 % headroom, ~93 % of a card usable
        print(f"{base:12s} {'on' if checkpointing else 'off':14s} {weights:8.2f}G {peak:8.2f}G   {card}")


if __name__ == "__main__":
    main()
