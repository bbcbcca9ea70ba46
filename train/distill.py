"""Turbo++ step-decoupled distillation: an 8-step Z-Image-Turbo teacher into a 2-step student.

What the paper states, and how it is built here:
- step-decoupled parameters: the frozen teacher plus one LoRA set per step (peft adapters "step1",
  "step2" on the diffusers module's main blocks and image path: LORA_TARGETS);
- end-to-end training with iterative regularisation: both student steps run from the teacher's noise
  and prompt, the final loss reaches step 1 through step 2 (no detach), and a step-1 loss holds the
  intermediate state to the teacher's trajectory at σ_mid;
- distribution-aligned adversarial learning: a discriminator whose "real" samples are the teacher's
  8-step outputs and "fake" the student's, made of small heads on the frozen teacher's features at a
  few blocks after re-noising (LADD / SANA-Sprint style), hinge loss.
Choices the paper leaves open (documented in the README): the step-1 target (the teacher's Euler
trajectory at σ_mid, exact for Euler since its path is piecewise linear in σ), LoRA targets and rank,
the re-noise range, the loss weights, when the adversarial term starts.

The sampler the student is trained for is the pack's 2-step sampler (samplers/two_step.py): σ = 1,
shift(σ_mid), 0 and the step-2 rule; the output LoRAs and bundle run there unchanged.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load_file, save_file

from ..loaders.step_decoupled import StepSettings
from ..samplers.latents import comfy_noise
from ..samplers.schedules import full_schedule
from ..samplers.two_step import two_step_sigmas

ADAPTERS = ("step1", "step2")
# The main blocks' attention and feed-forward layers (caption and image tokens share them), and the
# image path around them: the noise refiner, each block's adaLN modulation, the timestep embedder, the
# patch embedder and the final layer. Those see no caption, so what a step learns there holds for
# every prompt; in the toy world they take the held-out gap closed from 64 % to 72.5 % (bench/distill_toy.py).
MAIN_BLOCK_TARGETS = r"layers\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.(w1|w2|w3))"
LORA_TARGETS = (r"(layers|noise_refiner)\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.(w1|w2|w3)|adaLN_modulation\.0)"
                r"|all_final_layer\.[^.]+\.(linear|adaLN_modulation\.1)|all_x_embedder\.[^.]+|t_embedder\.mlp\.(0|2)")


@dataclass
class DistillConfig:
    out: str
    prompts: list[str]
    width: int = 1024
    height: int = 1024
    samples_per_prompt: int = 4
    steps: int = 2000
    batch: int = 4
    rank: int = 16
    lora_targets: str = LORA_TARGETS  # a regex over the diffusers module's Linear names
    lr: float = 1e-4
    lr_disc: float = 1e-4
    w_final: float = 1.0
    w_step1: float = 0.1  # 0.5 and 0 were measured in the toy world too: README
    w_adv: float = 0.05
    adv_start: int = 0  # steps of plain regression before the adversarial term joins
    decoupled: bool = True  # False: one LoRA shared by both steps (the ablation)
    teacher_steps: int = 8
    shift: float = 3.0
    sigma_mid: float = 0.5  # before the shift, as the 2-Step Sampler takes it
    step2_rule: str = "euler"
    disc_layers: tuple = ()  # main blocks whose (frozen teacher) features feed the heads; () = at 1/3 and 2/3 depth
    renoise: tuple = (0.1, 0.9)  # σ range the samples are re-noised to before the discriminator sees them
    checkpoint_every: int = 100
    seed: int = 0
    gradient_checkpointing: bool = False
    models: str = ""  # which teacher and text encoder (files_identity): a cache or checkpoint of others is not reused

    def settings(self) -> StepSettings:
        return StepSettings(sigma_mid=self.sigma_mid, shift=self.shift, step2_rule=self.step2_rule).check()


# --- the model calls, with gradients ---------------------------------------------------------

def velocity(module, x: torch.Tensor, sigma: float, features: list[torch.Tensor]) -> torch.Tensor:
    """The flow velocity at σ (model space), as samplers/turbo.py computes it, but differentiable."""
    t = torch.full((x.shape[0],), 1.0 - sigma, dtype=torch.float32, device=x.device)
    x_list, caps = model_inputs(module, x, features)
    out = module(x_list, t, caps, return_dict=False)[0]
    return -torch.stack(out).squeeze(2).to(x.dtype)


def model_inputs(module, x: torch.Tensor, features: list[torch.Tensor]) -> tuple[list, list]:
    """The diffusers module's list inputs in its compute dtype (the student's own arithmetic stays
    float32; a bf16 base gets bf16 inputs, the cast is differentiable)."""
    dtype = module.x_pad_token.dtype  # a top-level parameter: in the compute dtype, whatever the layers are stored in
    return list(x.to(dtype).unsqueeze(2)), [f.to(dtype) for f in features]


@torch.no_grad()
def teacher_run(module, noise: torch.Tensor, features: list[torch.Tensor], steps: int, shift: float, sigma_mid: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, state at ``sigma_mid``) of the teacher's Euler run. Euler's path is linear in σ between
    its grid points, so the state at any σ between two of them is their interpolation: exact."""
    sigmas = full_schedule(steps, shift).tolist()
    x, mid = noise.clone(), None
    for i in range(steps):
        v = velocity(module, x, sigmas[i], features)
        nxt = x + (sigmas[i + 1] - sigmas[i]) * v
        if mid is None and sigmas[i + 1] <= sigma_mid <= sigmas[i]:
            mid = x + (sigma_mid - sigmas[i]) * v
        x = nxt
    return x, mid


def student_run(module, noise: torch.Tensor, features: list[torch.Tensor], sigmas: tuple[float, float], rule: str, renoise: torch.Tensor | None,
                activate) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, state at σ_mid, step 1's x0 prediction): the 2-step sampler's arithmetic with the step's
    adapter active, gradients kept through both steps."""
    s0, s1 = sigmas
    activate("step1")
    v = velocity(module, noise, s0, features)
    x0_step1 = noise - s0 * v
    x_mid = noise + (s1 - s0) * v if rule == "euler" else s1 * renoise + (1 - s1) * x0_step1
    activate("step2")
    x0 = x_mid - s1 * velocity(module, x_mid, s1, features)
    return x0, x_mid, x0_step1


# --- adapters --------------------------------------------------------------------------------

def add_adapters(module, rank: int, decoupled: bool, targets: str = LORA_TARGETS) -> list[torch.nn.Parameter]:
    """peft LoRA adapters (B = 0: the student starts as the teacher), float32 whatever the base's dtype."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise SystemExit("the trainer needs peft: pip install 'comfyui-zimage[train]' (or pip install peft)") from None

    names = ADAPTERS if decoupled else ("shared",)
    with warnings.catch_warnings():  # peft warns that a second adapter is added: that is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        for name in names:
            module.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=True), adapter_name=name)
    _materialise_meta_adapters(module, names)
    params = [p for n, p in module.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
    return params


def _materialise_meta_adapters(module, names) -> None:
    """peft puts an adapter on its base layer's weight's device; the pack's quantised layers (Comfy-Org
    fp8 / int8 / nvfp4 files, GGUF) report a meta ``weight`` (their real one is ``stored_weight``),
    so their adapters land on meta, and the backward then fails. Re-made here on the model's device
    with peft's own initialisation."""
    from peft.tuners.lora.layer import LoraLayer

    device = module.x_pad_token.device
    for layer in module.modules():
        if not isinstance(layer, LoraLayer):
            continue
        for name in names:
            if name in layer.lora_A and (layer.lora_A[name].weight.is_meta or layer.lora_B[name].weight.is_meta):
                layer.lora_A[name].to_empty(device=device)
                layer.lora_B[name].to_empty(device=device)
                layer.reset_lora_parameters(name, init_lora_weights=True)


class AdapterSwitch:
    """switch(step) turns that step's adapter on (None: all off, the frozen teacher).

    Two traps: diffusers/peft's set_adapter and enable_adapters turn requires_grad off on the other
    adapter, which would leave step 1 without gradient once step 2 (or the teacher pass) is set — turned
    back on here. And gradient checkpointing recomputes a block during the backward, when another
    adapter is active: ``checkpoint`` (given to diffusers as its checkpointing function) recomputes each
    block under the adapter it ran with, else step 1's blocks would be recomputed with step 2's LoRA."""

    def __init__(self, module, params: list[torch.nn.Parameter], decoupled: bool):
        self.module, self.params, self.decoupled = module, params, decoupled
        self.current = "unset"

    def __call__(self, step: str | None) -> None:
        if step == self.current:
            return
        if step is None:
            self.module.disable_adapters()
        else:
            self.module.enable_adapters()
            self.module.set_adapter(step if self.decoupled else "shared")
        for p in self.params:
            p.requires_grad_(True)
        self.current = step

    def checkpoint(self, function, *args, **kwargs):
        step = self.current

        def run(*inner, **inner_kwargs):
            before = self.current
            self(step)
            try:
                return function(*inner, **inner_kwargs)
            finally:
                self(before)

        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, **kwargs)


def adapter_state(module, name: str) -> dict[str, torch.Tensor]:
    """One adapter's weights in diffusers / PEFT naming (``transformer.layers.N….lora_A.weight``),
    which the pack's LoRA loader and diffusers' ``load_lora_weights`` read."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(module, adapter_name=name)
    return {f"transformer.{k}": v.detach().float().contiguous() for k, v in state.items()}


# --- the discriminator -------------------------------------------------------------------------

class _FeaturesTaken(Exception):
    """Raised by the last head's block hook: the rest of the teacher's pass is not needed."""


class Discriminator(torch.nn.Module):
    """Heads on the frozen teacher's hidden states at ``layers``: per token, then averaged."""

    def __init__(self, dim: int, layers: tuple, hidden: int = 128):
        super().__init__()
        self.layers = tuple(layers)
        self.heads = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1))
                                         for _ in self.layers)

    def features(self, module, x: torch.Tensor, sigma: torch.Tensor, features: list[torch.Tensor], switch=None) -> list[torch.Tensor]:
        """The teacher's (adapters off) hidden states of re-noised ``x``; differentiable in ``x``. The pass
        stops after the last block a head reads (a third of the blocks and the final layer not run)."""
        captured = {}
        last = max(self.layers)

        def keep(block, args, out, i):
            captured[i] = out
            if i == last:
                raise _FeaturesTaken

        hooks = [module.layers[i].register_forward_hook(lambda m, args, out, i=i: keep(m, args, out, i)) for i in self.layers]
        before = switch.current if switch is not None else None
        switch(None) if switch is not None else module.disable_adapters()
        try:
            x_list, caps = model_inputs(module, x, features)
            module(x_list, (1.0 - sigma).float(), caps, return_dict=False)
        except _FeaturesTaken:
            pass
        finally:
            switch(before) if switch is not None else module.enable_adapters()
            for hook in hooks:
                hook.remove()
        return [captured[i] for i in self.layers]

    def logits(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        return sum(head(h.float()).squeeze(-1).mean(-1) for head, h in zip(self.heads, hidden)) / len(self.heads)


# --- the teacher cache ----------------------------------------------------------------------------

def files_identity(*paths: str) -> str:
    """A short fingerprint of model files or folders: each file's size and its first and last MiB
    (reading 12 GB to tell two teachers apart is not needed; a copy of the same file keeps it)."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(glob.glob(os.path.join(path, "**", "*.safetensors"), recursive=True)) if os.path.isdir(path) else [path]
        for name in files:
            size = os.path.getsize(name)
            digest.update(f"{os.path.basename(name)}:{size}".encode())
            with open(name, "rb") as handle:
                digest.update(handle.read(2**20))
                handle.seek(max(0, size - 2**20))
                digest.update(handle.read(2**20))
    return digest.hexdigest()[:16]


def build_cache(config: DistillConfig, module, encode, log=print, processes=None) -> dict:
    """The teacher's samples (noise, state at σ_mid, x0) for every prompt × sample, made once into
    ``out/teacher_cache.safetensors`` and reused while the settings are the same (with any number of
    processes). Several processes each make the samples of every N-th prompt into a shard; the main one
    joins the shards in the one-process order into the one file. A prompt's samples are computed the same
    way whichever process makes them, so the file is the same bit for bit."""
    path = os.path.join(config.out, "teacher_cache.safetensors")
    key = json.dumps({"prompts": config.prompts, "size": [config.width, config.height], "samples": config.samples_per_prompt,
                      "steps": config.teacher_steps, "shift": config.shift, "sigma_mid": config.sigma_mid, "seed": config.seed,
                      "models": config.models})
    rank, count = (processes.rank, processes.count) if processes is not None else (0, 1)
    if _cache_key(path) != key:
        os.makedirs(config.out, exist_ok=True)
        mine = _teacher_samples(config, module, encode, log, prompts=range(rank, len(config.prompts), count))
        if count == 1:
            return _cache_dict(_save_cache([mine], path, key), len(config.prompts))
        shard = os.path.join(config.out, f"teacher_cache.part{rank}of{count}.safetensors")
        save_file(mine, shard, metadata={"key": key})
        processes.wait()
        joined = None
        if processes.main:
            shards = [os.path.join(config.out, f"teacher_cache.part{r}of{count}.safetensors") for r in range(count)]
            joined = _save_cache([load_file(name) for name in shards], path, key)
            for name in shards:
                os.remove(name)
        processes.wait()
        if joined is not None:
            return _cache_dict(joined, len(config.prompts))
    return _cache_dict(load_file(path), len(config.prompts))


def _cache_key(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        return (handle.metadata() or {}).get("key")


def _teacher_samples(config: DistillConfig, module, encode, log, prompts) -> dict[str, torch.Tensor]:
    """The samples of ``prompts`` (indices), as flat tensors: "noise.P.J", "x_mid.P.J", "x0.P.J", "features.P"."""
    sigma_mid = float(two_step_sigmas(config.settings())[1])
    device = module.x_pad_token.device  # the teacher runs there; the cache is kept on the CPU
    shape = (1, module.config.in_channels, config.height // 8, config.width // 8)
    tensors = {}
    for i in prompts:
        feats = encode(config.prompts[i]).to(device)
        tensors[f"features.{i}"] = feats.cpu().clone()
        for first in range(0, config.samples_per_prompt, config.batch):  # a prompt's samples run together, `batch` (global) at a time
            count = min(config.batch, config.samples_per_prompt - first)
            # ComfyUI's noise, one seed per sample: the pack's sampler starts from exactly this
            noise = torch.cat([comfy_noise(shape, config.seed * 1_000_003 + i * 1009 + j) for j in range(first, first + count)])
            x0, mid = teacher_run(module, noise.to(device), [feats] * count, config.teacher_steps, config.shift, sigma_mid)
            for j in range(count):
                tensors[f"noise.{i}.{first + j}"] = noise[j].clone()  # clones: safetensors refuses views of one storage
                tensors[f"x_mid.{i}.{first + j}"] = mid[j].float().cpu().clone()
                tensors[f"x0.{i}.{first + j}"] = x0[j].float().cpu().clone()
        log(f"teacher cache: prompt {i + 1}/{len(config.prompts)}")
    return tensors


def _save_cache(parts: list[dict], path: str, key: str) -> dict[str, torch.Tensor]:
    """The samples in one file, prompt by prompt, each prompt's samples in order (the one-process order);
    returns what it wrote."""
    found = {k: v for part in parts for k, v in part.items()}
    prompts = sorted(int(k.split(".")[1]) for k in found if k.startswith("features."))
    samples = sorted({int(k.split(".")[2]) for k in found if k.startswith("noise.")})
    order = [(i, j) for i in prompts for j in samples]
    tensors = {name: torch.stack([found[f"{name}.{i}.{j}"] for i, j in order]) for name in ("noise", "x_mid", "x0")}
    tensors["prompt"] = torch.tensor([i for i, _ in order])
    tensors.update({f"features.{i}": found[f"features.{i}"] for i in prompts})
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(tensors, path + ".tmp", metadata={"key": key})
    os.replace(path + ".tmp", path)
    return tensors


def _cache_dict(tensors: dict, prompts: int) -> dict:
    return {**{k: tensors[k] for k in ("noise", "x_mid", "x0", "prompt")}, "features": [tensors[f"features.{i}"] for i in range(prompts)]}


# --- training ------------------------------------------------------------------------------------

@dataclass
class TrainState:
    step: int = 0
    log: list = field(default_factory=list)


class Trainer:
    """One process of the training (``processes``: this process's place among those accelerate launched;
    by default the only one)."""

    def __init__(self, config: DistillConfig, module, encode, log=print, processes=None):
        from .parallel import Processes

        self.config, self.module = config, module
        self.processes = processes or Processes.start()
        self.log_line = log if self.processes.main else (lambda *args: None)
        self.share = self.processes.share(config.batch)  # refuses a global batch that does not divide among the processes
        torch.manual_seed(config.seed)
        module.requires_grad_(False)
        self.device = module.x_pad_token.device
        self.cache = build_cache(config, module, encode, self.log_line, self.processes)
        self.features = [f.to(self.device) for f in self.cache["features"]]
        self.params = add_adapters(module, config.rank, config.decoupled, config.lora_targets)
        self.activate = AdapterSwitch(module, self.params, config.decoupled)
        if config.gradient_checkpointing:
            module.enable_gradient_checkpointing(gradient_checkpointing_func=self.activate.checkpoint)
        depth = module.config.n_layers
        self.disc = Discriminator(module.config.dim, config.disc_layers or tuple(sorted({depth // 3, (2 * depth) // 3}))).to(self.device)
        self.processes.same_everywhere(self.params + list(self.disc.parameters()))
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.0)
        self.opt_disc = torch.optim.AdamW(self.disc.parameters(), lr=config.lr_disc, betas=(0.0, 0.99), weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(config.seed)  # one stream for the global batch, the same on every process
        self.sigmas = tuple(float(s) for s in two_step_sigmas(config.settings())[:2])
        self.state = TrainState()
        self.processes.accelerator.register_for_checkpointing(self)
        self._resume()

    # checkpoints through accelerate's state: this trainer's state_dict (adapters, discriminator, both
    # optimisers, the generator, the step, the log) and every process's random state; a resumed run,
    # with any number of processes, continues exactly as an uninterrupted one
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.config.out, "checkpoint")

    def state_dict(self) -> dict:
        return {"step": self.state.step, "log": self.state.log, "lora": [p.detach().cpu().clone() for p in self.params],
                "disc": self.disc.state_dict(), "opt": self.opt.state_dict(), "opt_disc": self.opt_disc.state_dict(),
                "generator": self.generator.get_state(), "config": asdict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        mine = {k: v for k, v in asdict(self.config).items() if k not in ("steps", "checkpoint_every")}
        theirs = {k: v for k, v in state["config"].items() if k not in ("steps", "checkpoint_every")}
        if json.dumps(mine, sort_keys=True, default=list) != json.dumps(theirs, sort_keys=True, default=list):
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(f"{self.checkpoint_path} was made with other settings ({', '.join(differ)}); use another --out or delete it to start over")
        with torch.no_grad():
            for p, saved in zip(self.params, state["lora"]):
                p.copy_(saved)
        self.disc.load_state_dict(state["disc"])
        self.opt.load_state_dict(state["opt"])
        self.opt_disc.load_state_dict(state["opt_disc"])
        self.generator.set_state(state["generator"])
        self.state = TrainState(state["step"], state["log"])

    def save_checkpoint(self) -> None:
        """Written beside, then swapped in: a run killed while saving keeps the last checkpoint."""
        fresh, old = self.checkpoint_path + ".tmp", self.checkpoint_path + ".old"
        self.processes.accelerator.save_state(fresh)  # every process: its random state; the main one: the rest
        self.processes.wait()
        if self.processes.main:
            if os.path.exists(self.checkpoint_path):
                os.replace(self.checkpoint_path, old)
            os.replace(fresh, self.checkpoint_path)
            shutil.rmtree(old, ignore_errors=True)
        self.processes.wait()

    def _resume(self) -> None:
        if os.path.isdir(self.checkpoint_path):
            self.processes.accelerator.load_state(self.checkpoint_path)
        elif os.path.exists(os.path.join(self.config.out, "checkpoint.pt")):  # a checkpoint of the one-process trainer before accelerate
            self.load_state_dict(torch.load(os.path.join(self.config.out, "checkpoint.pt"), weights_only=False))
        else:
            return
        if self.processes.main:
            self._write_log()  # drops the lines of steps after the checkpoint: they run again
        self.log_line(f"resumed at step {self.state.step}")

    def _write_log(self) -> None:
        with open(os.path.join(self.config.out, "train_log.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(entry) + "\n" for entry in self.state.log)

    def batch(self):
        """This process's share of the global batch: every draw is made for the whole batch (the same on
        every process, on the CPU: the same on every device) and sliced."""
        index = torch.randint(0, self.cache["noise"].shape[0], (self.config.batch,), generator=self.generator)
        renoise = torch.randn(self.cache["noise"][index].shape, generator=self.generator)
        index, renoise = index[self.share], renoise[self.share]
        features = [self.features[int(self.cache["prompt"][i])] for i in index]
        on = lambda t: t.to(self.device)  # noqa: E731
        return on(self.cache["noise"][index]), on(self.cache["x_mid"][index]), on(self.cache["x0"][index]), features, on(renoise)

    def losses(self, noise, x_mid_t, x0_t, features, renoise) -> tuple[torch.Tensor, dict, tuple]:
        c = self.config
        x0, x_mid, x0_step1 = student_run(self.module, noise, features, self.sigmas, c.step2_rule, renoise, self.activate)
        final = (x0 - x0_t).pow(2).mean()
        # step 1 held to the teacher: its state at σ_mid (euler), or its x0 guess (x0_renoise: that is what step 2 sees)
        step1 = (x_mid - x_mid_t).pow(2).mean() if c.step2_rule == "euler" else (x0_step1 - x0_t).pow(2).mean()
        total = c.w_final * final + c.w_step1 * step1
        parts = {"final": final.item(), "step1": step1.item()}
        adversarial = c.w_adv > 0 and self.state.step >= c.adv_start
        disc_inputs = None
        if adversarial:
            low, high = c.renoise
            mine = torch.cat([torch.arange(c.batch)[self.share], c.batch + torch.arange(c.batch)[self.share]])  # this process's reals, then fakes
            sigma = (low + (high - low) * torch.rand(2 * c.batch, generator=self.generator))[mine].to(self.device)
            fresh = torch.randn((2 * c.batch,) + tuple(noise.shape[1:]), generator=self.generator)[mine].to(self.device)
            both = torch.cat([x0_t, x0])
            noised = sigma[:, None, None, None] * fresh + (1 - sigma[:, None, None, None]) * both
            hidden = self.disc.features(self.module, noised, sigma, features + features, self.activate)
            fake_logits = self.disc.logits([h[noise.shape[0]:] for h in hidden])
            generator_loss = -fake_logits.mean()
            total = total + c.w_adv * generator_loss
            parts["gen"] = generator_loss.item()
            disc_inputs = [h.detach() for h in hidden]
        parts["total"] = total.item()
        return total, parts, disc_inputs

    def discriminator_step(self, hidden: list[torch.Tensor], batch: int) -> dict:
        logits = self.disc.logits(hidden)
        real, fake = logits[:batch], logits[batch:]
        loss = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
        self.opt_disc.zero_grad()
        loss.backward()
        self.processes.average_gradients(list(self.disc.parameters()))
        self.opt_disc.step()
        accuracy = ((real > 0).float().mean() + (fake < 0).float().mean()).item() / 2
        return {"disc": loss.item(), "disc_acc": accuracy}

    def train_step(self) -> dict:
        c = self.config
        noise, x_mid_t, x0_t, features, renoise = self.batch()
        total, parts, hidden = self.losses(noise, x_mid_t, x0_t, features, renoise)
        self.opt.zero_grad()
        total.backward()
        self.processes.average_gradients(self.params)  # the global batch's gradient, on every process
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        for group in self.opt.param_groups:  # warm-up then cosine
            group["lr"] = c.lr * min(1.0, (self.state.step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * self.state.step / max(1, c.steps)))
        self.opt.step()
        if hidden is not None:
            parts.update(self.discriminator_step(hidden, noise.shape[0]))
        self.state.step += 1
        names = sorted(parts)  # the losses and the discriminator's accuracy over the global batch: averaged over the processes
        averaged = self.processes.mean(torch.tensor([parts[n] for n in names], dtype=torch.float64, device=self.processes.device))
        return dict(zip(names, averaged.tolist()))

    def train(self, until: int | None = None, progress: bool = True) -> list[dict]:
        """Trains to ``until`` (default: the configured steps), checkpointing on the way."""
        until = self.config.steps if until is None else until
        bar = _bar(until, self.state.step) if progress and self.processes.main else None
        start = time.perf_counter()
        while self.state.step < until:
            parts = self.train_step()
            entry = {"step": self.state.step, **{k: round(v, 6) for k, v in parts.items()}, "seconds": round(time.perf_counter() - start, 2)}
            self.state.log.append(entry)
            if self.processes.main:
                with open(os.path.join(self.config.out, "train_log.jsonl"), "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(entry) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items() if k in ("final", "step1", "disc_acc")})
            if self.state.step % self.config.checkpoint_every == 0 or self.state.step == until:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        return self.state.log

    def lora_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """{"step1": …, "step2": …} (one shared LoRA: the same weights for both)."""
        if self.config.decoupled:
            return {name: adapter_state(self.module, name) for name in ADAPTERS}
        shared = adapter_state(self.module, "shared")
        return {name: shared for name in ADAPTERS}


def _bar(total: int, done: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="distilling", unit="step")
