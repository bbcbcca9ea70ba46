"""Traced peak device memory of the real-size Z-Image transformer and Qwen3-4B text encoder per
stored format and memory mode, with no GPU and no RAM: the models are built under torch's
FakeTensorMode, their Linear layers replaced by the pack's QuantizedLinear holding fake tensors of
each format's exact stored shapes and dtypes, and one forward at 1024² (the peak of any of the 8
steps: each step is the same forward) runs inside MemTracker.

Goals (issue 8), printed beside each figure:
  bf16 (text encoder off) ≤ 14.0 GiB; fp8 scaled and int8 ≤ 8.0 GiB; nvfp4 and GGUF Q4_K_M ≤ 5.5 GiB;
  bf16 with block offload ≤ 3.5 GiB; the fp8_mixed text encoder ≤ 5.5 GiB while encoding.

Block offload is traced as: the full bf16 trace's activation peak (peak − all weights) + the weights
that stay resident (embedders, final layer, pad tokens) + two blocks (the running one and the one
prefetched on the side stream), which is what diffusers' block-level group offloading holds.

    python bench/quantized_memory.py [--size 1024]
"""

from __future__ import annotations

import argparse

import torch

GIB = 2**30

# stored tensors per format for a Linear [out, in] (shapes as the files hold them)
FORMATS = {
    "bf16": None,
    "fp8 scaled (float8_e4m3fn)": lambda o, i: {"weight": ((o, i), torch.float8_e4m3fn), "weight_scale": ((), torch.float32)},
    "int8_tensorwise + ConvRot": lambda o, i: {"weight": ((o, i), torch.int8), "weight_scale": ((o, 1), torch.float32)},
    "nvfp4": lambda o, i: {"weight": ((o, i // 2), torch.uint8), "weight_scale": ((-(-o // 128) * 128, -(-(i // 16) // 4) * 4), torch.float8_e4m3fn), "weight_scale_2": ((), torch.float32)},
    "GGUF Q4_K_M": lambda o, i: {"weight": ((o, i // 256 * 144), torch.uint8)},
}
FORMAT_NAMES = {"fp8 scaled (float8_e4m3fn)": "float8_e4m3fn", "int8_tensorwise + ConvRot": "int8_tensorwise", "nvfp4": "nvfp4", "GGUF Q4_K_M": "gguf_Q4_K"}
GOALS = {"bf16": 14.0, "fp8 scaled (float8_e4m3fn)": 8.0, "int8_tensorwise + ConvRot": 8.0, "nvfp4": 5.5, "GGUF Q4_K_M": 5.5}


def _quantize_fake(module: torch.nn.Module, fmt: str, only_blocks: bool) -> None:
    from zimage_pack.loaders.quantized import QuantizedLinear, QuantizedWeight

    shapes = FORMATS[fmt]
    for name, linear in list(module.named_modules()):
        if not isinstance(linear, torch.nn.Linear) or isinstance(linear, QuantizedLinear):
            continue
        if only_blocks and not name.startswith(("layers.", "noise_refiner.", "context_refiner.")):
            continue
        o, i = linear.out_features, linear.in_features
        if fmt == "GGUF Q4_K_M" and i % 256:
            continue
        tensors = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in shapes(o, i).items()}
        options = {"quant_type": 12} if fmt.startswith("GGUF") else ({"convrot": True, "convrot_groupsize": 256} if "ConvRot" in fmt else {})
        new = QuantizedLinear(QuantizedWeight(FORMAT_NAMES[fmt], tensors, (o, i), options), linear.bias, torch.bfloat16)
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, new)


def _tracker():
    """MemTracker without its gradient hooks: int8 / uint8 stored weights cannot carry one (inference only)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class InferenceMemTracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

    return InferenceMemTracker()


def _nbytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(b.numel() * b.element_size() for b in module.buffers())


def transformer_peak(fmt: str, size: int, caption_tokens: int) -> tuple[int, int, int, int]:
    """(weights, traced peak, resident non-block weights, largest block) in bytes."""
    from diffusers import ZImageTransformer2DModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        torch.set_default_dtype(torch.bfloat16)
        model = ZImageTransformer2DModel()
        torch.set_default_dtype(torch.float32)
        if FORMATS[fmt] is not None:
            # Comfy-Org repacks quantise the blocks; GGUF files every 2-D weight
            _quantize_fake(model, fmt, only_blocks=not fmt.startswith("GGUF"))
        blocks = [b for n in ("layers", "noise_refiner", "context_refiner") for b in getattr(model, n)]
        weights = _nbytes(model)
        resident = weights - sum(_nbytes(b) for b in blocks)
        largest = max(_nbytes(b) for b in blocks)
        latent = size // 8
        x = [torch.randn(16, 1, latent, latent, dtype=torch.bfloat16)]
        caps = [torch.randn(caption_tokens, 2560, dtype=torch.bfloat16)]
        tracker = _tracker()
        tracker.track_external(model)
        with tracker, torch.no_grad():
            model(x, torch.tensor([0.5]), caps, return_dict=False)
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return weights, peak["Total"], resident, largest


def text_encoder_peak(fmt: str, tokens: int) -> tuple[int, int]:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    with FakeTensorMode():
        torch.set_default_dtype(torch.bfloat16)
        model = Qwen3Model(config)
        torch.set_default_dtype(torch.float32)
        if FORMATS[fmt] is not None:
            _quantize_fake(model, fmt, only_blocks=True)
        weights = _nbytes(model)
        ids = torch.zeros(1, tokens, dtype=torch.long)
        tracker = _tracker()
        tracker.track_external(model)
        with tracker, torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return weights, peak["Total"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--caption-tokens", type=int, default=512)
    args = parser.parse_args()
    import zimage_pack  # noqa: F401

    print(f"Z-Image transformer, {args.size}², batch 1, {args.caption_tokens} caption tokens (traced, FakeTensorMode + MemTracker)")
    print(f"{'format':32s} {'weights':>9s} {'peak':>9s}   goal")
    bf16 = None
    for fmt in FORMATS:
        weights, peak, resident, block = transformer_peak(fmt, args.size, args.caption_tokens)
        if fmt == "bf16":
            bf16 = (weights, peak, resident, block)
        goal = GOALS[fmt]
        print(f"{fmt:32s} {weights / GIB:8.2f}G {peak / GIB:8.2f}G   ≤ {goal:.1f} GiB: {'met' if peak / GIB <= goal else 'NOT met'}")
    weights, peak, resident, block = bf16
    offload = peak - weights + resident + 2 * block
    print(f"{'bf16, block_offload':32s} {'':9s} {offload / GIB:8.2f}G   ≤ 3.5 GiB: {'met' if offload / GIB <= 3.5 else 'NOT met'}"
          f"  (activations {(peak - weights) / GIB:.2f} + resident {resident / GIB:.2f} + 2 blocks {2 * block / GIB:.2f})")
    print("\nQwen3-4B text encoder, 512 tokens")
    for fmt in ("bf16", "fp8 scaled (float8_e4m3fn)"):
        weights, peak = text_encoder_peak(fmt, 512)
        label = "qwen_3_4b_fp8_mixed" if fmt != "bf16" else "qwen_3_4b (bf16)"
        goal = " ≤ 5.5 GiB: " + ("met" if peak / GIB <= 5.5 else "NOT met") if fmt != "bf16" else ""
        print(f"{label:32s} {weights / GIB:8.2f}G {peak / GIB:8.2f}G  {goal}")


if __name__ == "__main__":
    main()
