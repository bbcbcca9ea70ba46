"""The toy world's models, trained on the CPU from a seed: a tiny FLUX-layout VAE (16 latent channels,
8× down), a tiny Qwen3 text encoder (random, not trained: its features only have to tell the prompts
apart) and a tiny Z-Image transformer (diffusers' ZImageTransformer2DModel, the real model's class),
trained with Z-Image's flow-matching objective to draw the toy world's pictures in 8 Turbo steps.

    python -m zimage_pack.train.toy_models [--out train/toy_model] [--seed 0]

writes ``z_image_toy.safetensors`` (ComfyUI single-file layout), ``qwen_3_toy.safetensors``,
``ae_toy.safetensors`` (BFL layout) and ``tokenizer/`` (a Qwen2 BPE of the toy world's words at Qwen's
ids) — the pack's loaders read them like the real files."""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
from diffusers import ZImageTransformer2DModel

from ..loaders import demo_models as dm
from ..loaders.demo_tokenizer import write_tokenizer
from ..loaders.vae import SCALING_FACTOR, SHIFT_FACTOR
from ..samplers.schedules import shift_sigmas
from . import toy_world as world

HERE = os.path.dirname(os.path.abspath(__file__))
TOY_DIR = os.path.join(HERE, "toy_model")
FILES = {"transformer": "z_image_toy.safetensors", "text_encoder": "qwen_3_toy.safetensors", "vae": "ae_toy.safetensors", "tokenizer": "tokenizer"}
# The ids Qwen2's real tokenizer gives the toy world's words (mid-prompt, so with their leading space;
# the leading "a" is the byte 64 in both). The toy tokenizer gives them the same ids, so the toy text
# encoder, trained on the real tokenizer's ids, reads the same features from its own tokenizer; the
# tests check the two tokenizers agree on all 60 prompts where the real files are at hand.
QWEN_IDS = {" a": 264, " on": 389, " background": 4004, " red": 2518, " green": 6176, " blue": 6303, " yellow": 13753,
            " white": 4158, " circle": 12671, " square": 9334, " triangle": 21495}
TEXT_ENCODER = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1, head_dim=8)
TRANSFORMER = dict(dim=128, n_layers=4, n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=8, axes_dims=[8, 12, 12])
SHIFT = 3.0


def toy_paths(folder: str = TOY_DIR) -> dict[str, str]:
    return {kind: os.path.join(folder, name) for kind, name in FILES.items()}


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] → float [N, 3, H, W] in -1..1 (the VAE's range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _optimise(optimiser, loss, lr: float, step: int, steps: int, warmup: int, clip=None) -> None:
    """One update, then the learning rate for the next: linear warm-up, cosine decay."""
    optimiser.zero_grad()
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    optimiser.step()
    for group in optimiser.param_groups:
        group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps))


def train_vae(seed: int, steps: int = 2000, batch: int = 8, lr: float = 2e-3, log=print):
    """Reconstruction (L1 + MSE) with the latents held to Z-Image's convention: model-space latents
    ``(z − 0.1159)·0.3611`` of mean 0 and std 1, so the pack's fixed scaling fits this VAE too."""
    torch.manual_seed(seed)
    vae = dm.make_vae(seed).requires_grad_(True).train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        images, _ = world.dataset(batch, seed * 100_003 + step, wide=True)
        x = to_pixels(images)
        mean = vae.encode(x).latent_dist.mean
        model_space = (mean - SHIFT_FACTOR) * SCALING_FACTOR
        z = mean + 0.02 * torch.randn_like(mean) / SCALING_FACTOR  # a little robustness to a sampler's small errors
        out = vae.decode(z).sample
        loss = (out - x).abs().mean() + (out - x).pow(2).mean() + 0.1 * (model_space.mean().pow(2) + (model_space.std() - 1).pow(2))
        _optimise(optimiser, loss, lr, step, steps, warmup=50)
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}: loss {loss.item():.4f}, latent mean {model_space.mean().item():+.3f} std {model_space.std().item():.3f}")
    return vae.eval().requires_grad_(False)


def prompt_features(encoder, scenes) -> dict[str, torch.Tensor]:
    from ..loaders.text_encoder import encode_prompts

    prompts = sorted({s.prompt for s in scenes})
    return dict(zip(prompts, encode_prompts(encoder, prompts)))


def model_space_latents(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        means = [vae.encode(to_pixels(images[i:i + batch])).latent_dist.mean for i in range(0, len(images), batch)]
    return (torch.cat(means) - SHIFT_FACTOR) * SCALING_FACTOR


def velocity_target_loss(model, x0: torch.Tensor, features: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """Z-Image's flow matching: x_σ = σ·noise + (1 − σ)·x0, the model called with t = 1 − σ predicts
    x0 − noise (the negated velocity); σ drawn uniformly and shifted like the sampler's schedule."""
    noise = torch.randn(x0.shape, generator=generator)
    sigma = shift_sigmas(torch.rand(x0.shape[0], generator=generator, dtype=torch.float64), SHIFT).float()
    x = sigma[:, None, None, None] * noise + (1 - sigma[:, None, None, None]) * x0
    out = torch.stack(model(list(x.unsqueeze(2)), 1 - sigma, features)[0]).squeeze(2)
    return (out - (x0 - noise)).pow(2).mean()


def train_transformer(vae, features: dict, seed: int, steps: int = 4000, batch: int = 32, data: int = 6000, lr: float = 1e-3, log=print):
    torch.manual_seed(seed)
    images, scenes = world.dataset(data, seed + 7)
    latents = model_space_latents(vae, images)
    model = ZImageTransformer2DModel(**TRANSFORMER).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        index = torch.randint(0, data, (batch,), generator=generator)
        loss = velocity_target_loss(model, latents[index], [features[scenes[i].prompt] for i in index.tolist()], generator)
        _optimise(optimiser, loss, lr, step, steps, warmup=100, clip=model.parameters())
        if step % 100 == 0 or step == steps - 1:
            log(f"transformer step {step}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    return model.eval().requires_grad_(False)


def write_toy_tokenizer(folder: str) -> str:
    return write_tokenizer(folder, QWEN_IDS)


def write_toy_models(folder: str, seed: int = 0, vae_steps: int = 2000, transformer_steps: int = 4000,
                     only_transformer: bool = False, log=print, transformer_data: int = 6000) -> dict:
    """All the files from ``seed`` (``only_transformer``: keep the text encoder and VAE already in ``folder``)."""
    from ..loaders.text_encoder import load_text_encoder

    paths = toy_paths(folder)
    os.makedirs(folder, exist_ok=True)
    write_toy_tokenizer(paths["tokenizer"])
    if not only_transformer:
        encoder = dm.make_text_encoder(seed + 1, **TEXT_ENCODER).to(torch.bfloat16)
        dm.write_text_encoder(encoder, paths["text_encoder"])
    features = prompt_features(load_text_encoder(paths["text_encoder"], paths["tokenizer"], compute_dtype="fp32"), world.ALL_SCENES)
    if not only_transformer:
        dm.write_vae(train_vae(seed, vae_steps, log=log).to(torch.bfloat16), paths["vae"])
    from ..loaders.vae import load_vae

    vae = load_vae(paths["vae"], compute_dtype="fp32").model  # the stored (bf16) weights, as the pack will use them
    model = train_transformer(vae, features, seed, transformer_steps, data=transformer_data, log=log)
    dm.write_transformer(model.to(torch.bfloat16), paths["transformer"])
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=TOY_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--transformer-steps", type=int, default=4000)
    parser.add_argument("--only-transformer", action="store_true", help="keep the text encoder and VAE in --out, train the transformer again")
    args = parser.parse_args(argv)
    write_toy_models(args.out, args.seed, args.vae_steps, args.transformer_steps, only_transformer=args.only_transformer)


if __name__ == "__main__":
    main()
