"""GPU check: block offloading with CUDA streams follows every weight change the pack makes.

diffusers' group offloading with streams copies each group's weights into pinned host memory when it
is applied and onloads from those copies, so after a LoRA merge or the 2-step sampler's per-step
parameter swap the pack must apply it again (``residency.weights_changed``), or the next call
computes with the old weights and nothing fails. The CPU has no streams, so tests/test_residency.py
can only emulate this; here it runs for real.

A Z-Image transformer of the real width (dim 3840, 30 heads, caption 2560; ``--layers`` main layers,
random weights from a seed) or ``--transformer FILE`` is run three times, as a user's queue would:
the 2-step sampler with a LoRA on both steps and step 2's own tensors swapped in between, the Turbo
sampler with the LoRA taken off, and the 2-step sampler again. The whole sequence runs once with the
model whole on the device (the reference) and once under ``--mode`` (block_offload: streams, as the
loader's memory_mode sets it up). Goal: each offloaded result within 1e-3 of the reference's largest
value (the same kernels on the same weights: exact is expected), while the LoRA and the swap each
change the result by far more. A control runs the offloaded sequence with the re-arm switched off:
with streams it must miss the goal (stale weights), which shows the check can fail.

    python bench/gpu_offload_rearm.py [--layers 2] [--size 512] [--mode block_offload|leaf_offload] [--transformer FILE]
    python bench/gpu_offload_rearm.py --device cpu --tiny    # smoke test of this script (no streams on a CPU)

Not part of the test suite. Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

GOAL = 1e-3  # max |offloaded − reference| / max |reference|


def _import_pack():
    try:
        import zimage_pack  # noqa: F401  (pip install -e .)
    except ImportError:
        import importlib.util

        root = Path(__file__).resolve().parents[1]
        spec = importlib.util.spec_from_file_location("zimage_pack", root / "__init__.py", submodule_search_locations=[str(root)])
        module = sys.modules["zimage_pack"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


def _build(args, dtype: torch.dtype):
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders.transformer import ZImageTransformer, load_transformer

    if args.transformer:
        return load_transformer(args.transformer)
    config = dict(dm.TINY_TRANSFORMER) if args.tiny else dict(dm.REAL_TRANSFORMER, n_layers=args.layers, n_refiner_layers=1)
    torch.set_default_dtype(dtype)  # random weights made in the compute dtype: no float32 copy of a big model
    try:
        module = dm.make_transformer(seed=args.seed, **config)
    finally:
        torch.set_default_dtype(torch.float32)
    return ZImageTransformer(module, dtype, dtype, f"random (seed {args.seed})")


def _step2_tensors(module, layers: int, seed: int) -> dict:
    """Step 2's own tensors: the Linear weights of the first ``layers`` main layers, moved by a fifth
    of their spread, in pinned host memory as from_models keeps them."""
    from zimage_pack.loaders.param_sets import host_copy

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, param in module.named_parameters():
        parts = name.split(".")
        if parts[0] == "layers" and int(parts[1]) < layers and param.ndim == 2:
            weight = param.detach().to("cpu", torch.float32)
            moved = weight + 0.2 * weight.std() * torch.randn(weight.shape, generator=generator)
            tensors[name] = host_copy(moved.to(param.dtype))
    return tensors


def _two_step(model, features, latent, seed) -> torch.Tensor:
    from zimage_pack.loaders.step_decoupled import StepSettings
    from zimage_pack.samplers.two_step import sample_two_step

    return sample_two_step(model, features, latent, seed, StepSettings())[0]


def _sequence(two_step, plain, features, latent, seed) -> list[torch.Tensor]:
    """A queue of three prompts: 2-step with the LoRA, Turbo without it, 2-step with it again."""
    from zimage_pack.samplers.turbo import sample

    return [_two_step(two_step, features, latent, seed), sample(plain, features, latent, seed, steps=2), _two_step(two_step, features, latent, seed)]


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _streams_on(module) -> bool:
    """Whether diffusers' offloading groups copy on a side stream (block and leaf level alike)."""
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook("group_offloading") if registry is not None else None
        if hook is not None:
            return getattr(hook.group, "stream", None) is not None
    return False


def _worst(got, want) -> float:
    return max(_relative(g, w) for g, w in zip(got, want))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny transformer (dim 64): a smoke test of this script")
    parser.add_argument("--layers", type=int, default=2, help="main layers of the random real-width transformer (30 = the real size)")
    parser.add_argument("--transformer", help="a Z-Image transformer file to use instead of random weights")
    parser.add_argument("--swap-layers", type=int, default=2, help="main layers whose Linear weights step 2 has of its own")
    parser.add_argument("--size", type=int, default=512, help="picture side in pixels (default 512; 64 with --tiny)")
    parser.add_argument("--mode", default="block_offload", choices=["block_offload", "leaf_offload"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 on CUDA, fp32 on the CPU or with --tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _import_pack()

    from dataclasses import replace

    from zimage_pack.loaders import demo_loras, param_sets, residency
    from zimage_pack.loaders.lora_merge import prepare_lora
    from zimage_pack.loaders.param_sets import ParamSet
    from zimage_pack.loaders.step_decoupled import StepDecoupledModel

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --tiny for a smoke test")
        return 2
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype, torch.float32 if args.tiny or device.type == "cpu" else torch.bfloat16)
    size = 64 if args.tiny and args.size == 512 else args.size
    started = time.perf_counter()
    base = _build(args, dtype)
    module = base.module
    config = module.config
    with tempfile.TemporaryDirectory() as folder:
        lora_path = os.path.join(folder, "lora.safetensors")
        demo_loras.write_lora(module, lora_path, "ai-toolkit", rank=8, seed=args.seed + 1)
        lora = prepare_lora(module, lora_path, 1.0)[0]
    with_lora = base.with_lora(lora)
    step2 = replace(with_lora, param_set=ParamSet(_step2_tensors(module, args.swap_layers, args.seed + 2), "step 2"))
    two_step = StepDecoupledModel((with_lora, step2), source="step 1 + step 2")
    generator = torch.Generator().manual_seed(args.seed + 3)
    features = [torch.randn(32, config.cap_feat_dim, generator=generator).to(dtype)]
    latent = torch.zeros(1, 16, size // 8, size // 8)
    activations = residency.transformer_activation_bytes(module, 1, size // 8, size // 8, 32, dtype)
    print(f"device {device}{f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else ''}; "
          f"transformer {base.source}: dim {config.dim}, {config.n_layers} layers, {residency.module_bytes(module) / 2**30:.2f} GiB "
          f"in {str(dtype).replace('torch.', '')}; {size}×{size}; LoRA rank 8 on every main layer; step 2 owns "
          f"{len(step2.param_set.tensors)} tensors ({step2.param_set.nbytes / 2**20:.0f} MiB)")

    # the reference: the whole model on the device
    residency.place_transformer(module, device, "full", activations)
    reference = _sequence(two_step, base, features, latent, args.seed)
    without_lora = StepDecoupledModel((base, replace(base, param_set=step2.param_set)))
    lora_effect = _relative(_two_step(without_lora, features, latent, args.seed), reference[0])
    swap_effect = _relative(_two_step(StepDecoupledModel((with_lora, with_lora)), features, latent, args.seed), reference[0])

    def offloaded(rearm: bool):
        rearms = []
        from diffusers.hooks import group_offloading as go

        original = go._maybe_remove_and_reapply_group_offloading
        go._maybe_remove_and_reapply_group_offloading = lambda m: rearms.append(1) or original(m)
        saved = param_sets.weights_changed
        if not rearm:
            param_sets.weights_changed = lambda m: None
        try:
            if device.type == "cpu":  # the loader keeps a CPU model whole: apply the offloading hooks directly (no streams)
                residency.apply_offloading(module, args.mode, device)
            else:
                residency.place_transformer(module, device, args.mode, activations)
            streams = _streams_on(module)
            begin = time.perf_counter()
            got = _sequence(two_step, base, features, latent, args.seed)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - begin
        finally:
            param_sets.weights_changed = saved
            go._maybe_remove_and_reapply_group_offloading = original
            residency.remove_offloading(module)
        return got, streams, len(rearms), seconds

    got, streams, rearms, seconds = offloaded(True)
    worst = _worst(got, reference)
    control, _, _, _ = offloaded(False)
    control_worst = _worst(control, reference)

    met = worst <= GOAL
    control_met = control_worst > GOAL if streams else True
    visible = lora_effect > 10 * GOAL and swap_effect > 10 * GOAL  # what a stale weight would change is far above the goal
    result = met and control_met and visible
    print(f"{args.mode}, streams {'on' if streams else 'off (CPU: diffusers has no streams there)'}; "
          f"{rearms} re-arms in the 3 runs; offloaded sequence {seconds:.1f} s")
    print(f"{'':44s} {'max|Δ| / max|ref|':>18s}   goal")
    print(f"{'LoRA taken off (what a stale LoRA would do)':44s} {lora_effect:18.3g}   ≫ {GOAL:g}: {'met' if lora_effect > 10 * GOAL else 'NOT met'}")
    print(f"{'step 2 swap left out (a stale swap)':44s} {swap_effect:18.3g}   ≫ {GOAL:g}: {'met' if swap_effect > 10 * GOAL else 'NOT met'}")
    print(f"{f'{args.mode} vs whole, re-armed (worst of 3)':44s} {worst:18.3g}   ≤ {GOAL:g}: {'met' if met else 'NOT met'}"
          f"{' (exact)' if worst == 0 else ''}")
    print(f"{'control: re-arm switched off':44s} {control_worst:18.3g}   "
          + (f"> {GOAL:g}: {'met' if control_met else 'NOT met'} (shows the check sees stale weights)" if streams
             else "no goal without streams (the CPU onloads the current tensors)"))
    print(f"total {time.perf_counter() - started:.1f} s; RESULT: {'met' if result else 'NOT met'}")
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main())
