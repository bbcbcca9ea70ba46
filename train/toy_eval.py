"""The toy world's measure, with no neural judge: pictures are drawn by the pack's own samplers from
the toy model's files, decoded, and read back from their pixels (toy_world.judge)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..loaders.step_decoupled import StepSettings, from_models
from ..loaders.vae import decode
from ..samplers.latents import empty_latent, to_model_space
from ..samplers.turbo import sample
from ..samplers.two_step import sample_two_step
from . import toy_world as world

EVAL_SEED = 50_000  # far from the teacher cache's seeds


@dataclass
class Scores:
    right: float  # fraction of pictures that show the prompt
    latent_distance: float  # mean squared distance to the teacher's 8-step latents (model space)
    pixel_rmse: float  # RMS pixel difference to the teacher's 8-step pictures (0..255)


def eval_set(scenes=world.HELD_OUT, seeds_per_scene: int = 4) -> list[tuple[world.Scene, int]]:
    return [(scene, EVAL_SEED + 97 * i + j) for i, scene in enumerate(scenes) for j in range(seeds_per_scene)]


def pixels(vae, raw_latent: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        image = decode(vae, raw_latent, 0)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def draw_all(run, encode, vae, cases) -> tuple[torch.Tensor, np.ndarray]:
    """(model-space latents, uint8 pictures) of ``run(features, latent, seed)`` for each (scene, seed)."""
    latent = empty_latent(world.SIZE, world.SIZE, 1)
    cache, latents = {}, []
    for scene, seed in cases:
        if scene.prompt not in cache:
            cache[scene.prompt] = encode(scene.prompt)
        latents.append(run([cache[scene.prompt]], latent, seed))
    raw = torch.cat(latents)
    return to_model_space(raw), pixels(vae, raw)


def turbo(transformer, steps: int):
    return lambda features, latent, seed: sample(transformer, features, latent, seed, steps=steps, shift=3.0)


def two_step(step_model, settings: StepSettings):
    return lambda features, latent, seed: sample_two_step(step_model, features, latent, seed, settings)[0]


def score(latents: torch.Tensor, images: np.ndarray, cases, reference: tuple[torch.Tensor, np.ndarray]) -> Scores:
    right = float(np.mean([world.is_right(image, scene) for image, (scene, _) in zip(images, cases)]))
    distance = (latents - reference[0]).pow(2).mean().item()
    rmse = float(np.sqrt(np.mean((images.astype(np.float64) - reference[1].astype(np.float64)) ** 2)))
    return Scores(right, distance, rmse)


def teacher_in_two(transformer):
    return from_models(transformer, transformer)
