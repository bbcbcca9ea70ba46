"""The Turbo++ distillation trainer on a tiny random teacher: it learns, both adapters get gradient
(step 1 through step 2), a resumed run equals an uninterrupted one, the teacher cache is the pack's
own 8-step run, and what it writes (per-step LoRAs, bundle) reproduces its 2-step output in the pack."""

import json
import os

import pytest
import torch

from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders.text_encoder import encode_prompts, load_text_encoder
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.samplers.latents import comfy_noise, to_model_space
from zimage_pack.samplers.turbo import sample
from zimage_pack.train.distill import DistillConfig, Trainer, build_cache, model_inputs, student_run
from zimage_pack.train.outputs import write_bundle, write_loras

PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("teacher")
    transformer = dm.write_transformer(dm.make_transformer(3), str(root / "teacher.safetensors"))
    encoder = dm.write_text_encoder(dm.make_text_encoder(4), str(root / "encoder.safetensors"))
    return transformer, encoder, tokenizer_dir


def _config(teacher_files, out, **overrides) -> DistillConfig:
    settings = dict(out=str(out), prompts=PROMPTS, width=32, height=32, samples_per_prompt=2, steps=8, batch=2, rank=4, lr=3e-3,
                    lr_disc=1e-3, w_adv=0.05, checkpoint_every=2, seed=1)
    settings.update(overrides)
    return DistillConfig(**settings)


def _trainer(teacher_files, out, **overrides) -> Trainer:
    transformer, encoder_path, tokenizer = teacher_files
    encoder = load_text_encoder(encoder_path, tokenizer, compute_dtype="fp32")
    module = load_transformer(transformer, compute_dtype="fp32").module
    return Trainer(_config(teacher_files, out, **overrides), module, lambda p: encode_prompts(encoder, [p])[0], log=lambda *a: None)


def _eval_loss(trainer) -> float:
    cache = trainer.cache
    features = [cache["features"][int(i)] for i in cache["prompt"]]
    with torch.no_grad():
        x0, _, _ = student_run(trainer.module, cache["noise"], features, trainer.sigmas, "euler", None, trainer.activate)
    return (x0 - cache["x0"]).pow(2).mean().item()


def test_a_short_run_lowers_the_loss_and_changes_both_adapters(teacher_files, tmp_path):
    trainer = _trainer(teacher_files, tmp_path, steps=12, lr=1e-2)
    before_loss = _eval_loss(trainer)
    before = {n: p.detach().clone() for n, p in trainer.module.named_parameters() if "lora_B" in n}
    log = trainer.train(progress=False)
    assert _eval_loss(trainer) < 0.8 * before_loss
    for step in ("step1", "step2"):
        changed = [n for n, p in trainer.module.named_parameters() if "lora_B" in n and f".{step}." in n and not torch.equal(p, before[n])]
        assert changed, f"{step}'s adapter did not change"
    assert all({"final", "step1", "gen", "disc", "disc_acc"} <= set(entry) for entry in log)  # each loss and the discriminator's accuracy are logged
    assert os.path.exists(tmp_path / "train_log.jsonl") and len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 12


def test_the_final_loss_reaches_step_one_through_step_two(teacher_files, tmp_path):
    """Only the final loss: step 1's adapter gets gradient through step 2. The same with x_mid detached gives
    none (so the check can fail); and switching to step 2's adapter leaves step 1's trainable."""
    trainer = _trainer(teacher_files, tmp_path, w_step1=0.0, w_adv=0.0)
    noise, x_mid_t, x0_t, features, renoise = trainer.batch()

    def step1_grad(detach: bool) -> float:
        trainer.module.zero_grad()
        s0, s1 = trainer.sigmas
        trainer.activate("step1")
        from zimage_pack.train.distill import velocity

        v = velocity(trainer.module, noise, s0, features)
        x_mid = noise + (s1 - s0) * v
        trainer.activate("step2")
        assert all(p.requires_grad for p in trainer.params), "set_adapter switched step 1's adapter off"
        x0 = (x_mid.detach() if detach else x_mid) - s1 * velocity(trainer.module, x_mid.detach() if detach else x_mid, s1, features)
        (x0 - x0_t).pow(2).mean().backward()
        return sum(p.grad.abs().sum().item() for n, p in trainer.module.named_parameters() if ".step1." in n and p.grad is not None)

    assert step1_grad(detach=False) > 0
    assert step1_grad(detach=True) == 0


def test_a_resumed_run_equals_an_uninterrupted_one(teacher_files, tmp_path):
    straight = _trainer(teacher_files, tmp_path / "a", steps=4)
    straight.train(progress=False)
    first = _trainer(teacher_files, tmp_path / "b", steps=4)
    first.train(until=2, progress=False)
    del first
    resumed = _trainer(teacher_files, tmp_path / "b", steps=4)
    assert resumed.state.step == 2
    resumed.train(progress=False)
    for a, b in zip(straight.params, resumed.params):
        assert torch.equal(a, b)
    assert [e["final"] for e in straight.state.log] == [e["final"] for e in resumed.state.log]
    assert (tmp_path / "a" / "train_log.jsonl").read_text().count("\n") == (tmp_path / "b" / "train_log.jsonl").read_text().count("\n") == 4


def test_the_teacher_cache_is_the_packs_own_8_step_run(teacher_files, tmp_path):
    """The trainer's cache (build_cache, what Trainer makes on start) against the pack's sampler (x0) and
    the design's loop written out here (the step-1 target x_mid)."""
    transformer, encoder_path, tokenizer = teacher_files
    encoder = load_text_encoder(encoder_path, tokenizer, compute_dtype="fp32")
    loaded = load_transformer(transformer, compute_dtype="fp32")
    cache = build_cache(_config(teacher_files, tmp_path), loaded.module, lambda p: encode_prompts(encoder, [p])[0], log=lambda *a: None)
    shape = (1, 16, 4, 4)
    latent = torch.zeros(shape)
    features = cache["features"][0]
    seed = 1 * 1_000_003 + 0 * 1009 + 1  # prompt 0, sample 1 (build_cache's seeds)
    assert torch.equal(cache["noise"][1], comfy_noise(shape, seed)[0])
    ours = to_model_space(sample(loaded, [features], latent, seed, steps=8, shift=3.0))
    assert torch.allclose(cache["x0"][1], ours[0], atol=1e-5)
    # the step-1 target: the teacher's state where its 8-step run reaches σ_mid (0.5 shifted by 3: 0.75, the
    # grid point after 4 steps); for σ_mid 0.4 (0.667, between 0.75 and 0.643) the Euler segment through it
    other = _config(teacher_files, tmp_path / "mid04", sigma_mid=0.4)
    mid04 = build_cache(other, loaded.module, lambda p: cache["features"][PROMPTS.index(p)], log=lambda *a: None)
    features = [cache["features"][int(i)] for i in cache["prompt"]]
    want = _teacher_states(loaded.module, cache["noise"], features, (0.75, 1.2 / 1.8))
    assert torch.equal(mid04["noise"], cache["noise"])
    for got, expected in ((cache["x_mid"], want[0]), (mid04["x_mid"], want[1])):
        assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert (want[0] - want[1]).abs().max().item() > 0.01  # the two σ_mid give different targets


def _teacher_states(module, noise, features, sigma_mids):
    """The teacher's state at each σ in ``sigma_mids``: the design's 8-step loop on diffusers' module (σ from
    linspace(1, 1/8, 8) shifted by 3, t = 1 − σ, v = −output, Euler), x + (σ − σ_i)·v on the step whose
    segment [σ_{i+1}, σ_i] holds σ (Euler moves along a straight line within a step)."""
    sigmas = [3 * s / (1 + 2 * s) for s in torch.linspace(1, 1 / 8, 8, dtype=torch.float64).tolist()] + [0.0]
    x, found = noise.clone(), {}
    with torch.no_grad():
        for i in range(8):
            out = module(list(x.unsqueeze(2).unbind(0)), torch.full((x.shape[0],), 1 - sigmas[i]), features, return_dict=False)[0]
            v = -torch.stack(out).squeeze(2)
            for s in sigma_mids:
                if sigmas[i + 1] <= s <= sigmas[i] and s not in found:
                    found[s] = x + (s - sigmas[i]) * v
            x = x + (sigmas[i + 1] - sigmas[i]) * v
    return [found[s] for s in sigma_mids]


@pytest.fixture(scope="module")
def quantised_teachers(tmp_path_factory):
    """The same teacher as users download it quantised: a Comfy-Org fp8 repack and a GGUF."""
    from zimage_pack.loaders import demo_quantized as dq

    root, model = tmp_path_factory.mktemp("quantised"), dm.make_transformer(3)
    return {"comfy_fp8": dq.write_quantized_transformer(model, str(root / "fp8.safetensors"), "float8_e4m3fn"),
            "gguf_q8_0": dq.write_gguf_transformer(model, str(root / "q8_0.gguf"), "Q8_0")}


@pytest.mark.parametrize("teacher_format", ["bf16_file", "comfy_fp8", "gguf_q8_0"])
def test_the_written_loras_and_bundle_reproduce_the_trainers_output(teacher_files, quantised_teachers, tmp_path, teacher_format):
    """Also on quantised teacher files: their layers report a meta ``weight``, where peft would put the
    adapters (the backward then fails); both adapters must be real, trained and reproduced by the pack."""
    from zimage_pack.loaders.lora_merge import prepare_lora
    from zimage_pack.loaders.step_decoupled import from_models, load_bundle
    from zimage_pack.samplers.two_step import sample_two_step

    teacher_path = teacher_files[0] if teacher_format == "bf16_file" else quantised_teachers[teacher_format]
    trainer = _trainer((teacher_path,) + tuple(teacher_files[1:]), tmp_path, steps=6)
    assert all(p.device.type == "cpu" for p in trainer.params)
    before = [p.detach().clone() for p in trainer.params]
    trainer.train(progress=False)
    assert all(not p.is_meta for p in trainer.params) and sum(not torch.equal(a, b) for a, b in zip(before, trainer.params)) > len(before) // 4
    loras = write_loras(trainer.lora_states(), str(tmp_path), trainer.config)
    counts = write_bundle(teacher_path, loras, str(tmp_path / "bundle.safetensors"), trainer.config.settings(), "fp32")
    assert counts["per_step"] > 0
    seed, shape = 77, (1, 16, 4, 4)
    features = trainer.cache["features"][1]
    with torch.no_grad():
        ours, _, _ = student_run(trainer.module, comfy_noise(shape, seed), [features], trainer.sigmas, "euler", None, trainer.activate)
    bundle = load_bundle(str(tmp_path / "bundle.safetensors"))
    assert bundle.settings == trainer.config.settings()
    from_bundle, _ = sample_two_step(bundle, [features], torch.zeros(shape), seed, bundle.settings)

    def with_loras(teacher):
        views = [teacher.with_lora(prepare_lora(teacher.module, loras[s], 1.0)[0]) for s in ("step1", "step2")]
        return sample_two_step(from_models(*views), [features], torch.zeros(shape), seed, trainer.config.settings())[0]

    teacher = load_transformer(teacher_path, compute_dtype="fp32")  # as the trainer had it (a quantised file stays quantised)
    from_loras = with_loras(teacher)
    scale = max(1.0, ours.abs().max().item())
    assert (to_model_space(from_loras) - ours).abs().max().item() < 1e-4 * scale
    # the bundle holds the teacher expanded, each step's LoRA merged: the LoRAs on the expanded teacher
    expanded = with_loras(load_transformer(teacher_path, weight_dtype="fp32", compute_dtype="fp32"))
    assert (to_model_space(from_bundle) - to_model_space(expanded)).abs().max().item() < 1e-4 * scale
    # and the student differs from the teacher run in 2 steps: the LoRAs do something
    plain, _ = sample_two_step(from_models(teacher, teacher), [features], torch.zeros(shape), seed, trainer.config.settings())
    assert (to_model_space(plain) - ours).abs().max().item() > 1e-3


def test_x0_renoise_training_unrolls_the_two_step_samplers_renoise_rule(teacher_files, tmp_path):
    """step2_rule x0_renoise: a few training steps, then the trainer's unroll on a seed's noise and re-noise
    (samplers/two_step.py's noises) equals the pack's 2-step sampler with the written LoRAs and that rule
    (x0₁ = x − σ₀·v₁, x_mid = σ_mid·renoise + (1 − σ_mid)·x0₁, x0 = x_mid − σ_mid·v₂; 1e-4 of the scale, as
    the LoRA reproduction above), and the losses hold x0₁ and x0 to the teacher's x0."""
    from zimage_pack.loaders.lora_merge import prepare_lora
    from zimage_pack.loaders.step_decoupled import from_models
    from zimage_pack.samplers.two_step import noises, sample_two_step

    trainer = _trainer(teacher_files, tmp_path, steps=2, lr=1e-2, w_adv=0.0, step2_rule="x0_renoise")
    trainer.train(progress=False)
    settings = trainer.config.settings()
    assert settings.step2_rule == "x0_renoise"
    loras = write_loras(trainer.lora_states(), str(tmp_path), trainer.config)
    teacher = load_transformer(teacher_files[0], compute_dtype="fp32")
    views = [teacher.with_lora(prepare_lora(teacher.module, loras[s], 1.0)[0]) for s in ("step1", "step2")]
    seed, shape, features = 5, (1, 16, 4, 4), trainer.cache["features"][0]
    want, want_step1 = (to_model_space(t) for t in sample_two_step(from_models(*views), [features], torch.zeros(shape), seed, settings))
    noise, renoise = noises(shape, seed)
    with torch.no_grad():
        x0, x_mid, x0_step1 = student_run(trainer.module, noise, [features], trainer.sigmas, "x0_renoise", renoise, trainer.activate)
    scale = max(1.0, want.abs().max().item())
    assert (x0 - want).abs().max().item() < 1e-4 * scale and (x0_step1 - want_step1).abs().max().item() < 1e-4 * scale
    s0, s1 = trainer.sigmas
    assert torch.allclose(x_mid, s1 * renoise + (1 - s1) * x0_step1)
    euler_mid = noise + (s1 - s0) * (noise - x0_step1) / s0  # the Euler rule's state from the same step-1 velocity
    assert (x_mid - euler_mid).abs().max().item() > 0.1  # the rule matters here
    # the losses: both against the teacher's x0 (step 1's x0 guess is what the re-noise rule passes on)
    x0_t = trainer.cache["x0"][:1]
    with torch.no_grad():
        _, parts, _ = trainer.losses(noise, trainer.cache["x_mid"][:1], x0_t, [features], renoise)
    assert parts["final"] == pytest.approx((x0 - x0_t).pow(2).mean().item(), rel=1e-5)
    assert parts["step1"] == pytest.approx((x0_step1 - x0_t).pow(2).mean().item(), rel=1e-5)


def test_the_discriminator_learns_to_tell_samples_apart(teacher_files, tmp_path):
    """On samples that differ (the teacher's x0 against a shifted copy) its accuracy rises from chance:
    the heads, the frozen-feature pass and the hinge loss work (in the toy world it stays near chance
    because the student is already within the re-noising's noise of the teacher)."""
    trainer = _trainer(teacher_files, tmp_path, lr_disc=3e-3)
    x0 = trainer.cache["x0"]
    features = [trainer.cache["features"][int(i)] for i in trainer.cache["prompt"]]
    sigma = torch.full((2 * x0.shape[0],), 0.3)
    fresh = torch.randn((2 * x0.shape[0],) + tuple(x0.shape[1:]), generator=torch.Generator().manual_seed(0))
    noised = 0.3 * fresh + 0.7 * torch.cat([x0, x0 + 1.0])
    with torch.no_grad():
        hidden = trainer.disc.features(trainer.module, noised, sigma, features + features)
        # the pass stops after the last head's block: the same hidden states as a whole pass gives
        whole = {}
        hooks = [trainer.module.layers[i].register_forward_hook(lambda m, a, out, i=i: whole.__setitem__(i, out)) for i in trainer.disc.layers]
        trainer.module.disable_adapters()
        x_list, caps = model_inputs(trainer.module, noised, features + features)
        trainer.module(x_list, 1.0 - sigma, caps, return_dict=False)
        trainer.module.enable_adapters()
        for hook in hooks:
            hook.remove()
    assert all(torch.equal(h, whole[i]) for h, i in zip(hidden, trainer.disc.layers))
    accuracy = [trainer.discriminator_step(hidden, x0.shape[0])["disc_acc"] for _ in range(40)]
    assert accuracy[-1] == 1.0 and min(accuracy[:1]) < 1.0


@pytest.fixture(scope="module")
def gradients(teacher_files, tmp_path_factory):
    """{LoRA parameter name: gradient} of one batch's total loss, from one trainer made with
    gradient_checkpointing=True: "configured" (as the trainer set itself up), then on request None
    (checkpointing off) or "plain" (diffusers' default checkpoint function), with w_adv as given. The
    generator is reset before each, so every run draws the same re-noising for the discriminator's pass."""
    trainer = _trainer(teacher_files, tmp_path_factory.mktemp("checkpointing"), gradient_checkpointing=True)
    trainer.module.train()
    batch = trainer.batch()
    state = trainer.generator.get_state()
    names = [n for n, p in trainer.module.named_parameters() if "lora_" in n]

    def grads(w_adv):
        trainer.module.zero_grad(set_to_none=True)
        trainer.generator.set_state(state)
        trainer.config.w_adv = w_adv
        total, _, _ = trainer.losses(*batch)
        total.backward()
        return {n: p.grad.clone() for n, p in zip(names, trainer.params) if p.grad is not None}

    configured = grads(0.05)

    def run(checkpointing, w_adv=0.05):
        if checkpointing == "configured":
            return configured
        if checkpointing == "plain":
            trainer.module.enable_gradient_checkpointing()
        try:
            return grads(w_adv)
        finally:
            trainer.module.disable_gradient_checkpointing()

    trainer.module.disable_gradient_checkpointing()
    return run


def _same(a: dict, b: dict) -> dict:
    assert set(a) == set(b) and a
    return {n: torch.allclose(a[n], b[n], rtol=1e-4, atol=1e-7) for n in a}


def test_gradient_checkpointing_gives_the_same_gradients(gradients):
    """Checkpointed blocks are recomputed in the backward while step 2's adapter (or none) is active; the
    trainer's checkpoint function recomputes each under the adapter it ran with, so the gradients match."""
    assert all(_same(gradients(None), gradients("configured")).values())


def test_plain_gradient_checkpointing_recomputes_step_one_with_step_twos_lora(gradients):
    """The negative control: diffusers' default checkpointing (no adapter switch in the recompute) fails the
    same comparison. Without the discriminator's teacher pass (with it, torch refuses the recompute) it runs
    and silently gives wrong gradients: step 1's LoRA in every checkpointed block (the refiners and main
    layers) gets step 2's recomputed activations; step 2's, active in the backward, stay right."""
    same = _same(gradients(None, w_adv=0.0), gradients("plain", w_adv=0.0))
    wrong = {n for n, ok in same.items() if not ok}
    assert wrong and all(".step1." in n for n in wrong)
    assert {n for n in wrong if ".lora_B." in n} == {n for n in same if ".step1." in n and ".lora_B." in n and n.startswith(("layers.", "noise_refiner.", "context_refiner."))}
    assert all(same[n] for n in same if ".step2." in n)


def test_the_command_trains_a_quantised_teacher_writes_its_outputs_and_resumes(teacher_files, quantised_teachers, tmp_path, capsys):
    """zimage-distill end to end on a Comfy-Org fp8 file (what most users have): the LoRAs and a bundle
    (the teacher expanded to bf16) are written; run again with more steps, it resumes."""
    from zimage_pack.loaders.step_decoupled import load_bundle
    from zimage_pack.train.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    args = ["--teacher", quantised_teachers["comfy_fp8"], "--text-encoder", teacher_files[1], "--tokenizer", teacher_files[2],
            "--prompts", str(prompts), "--out", str(out), "--width", "32", "--height", "32", "--samples-per-prompt", "2",
            "--batch", "2", "--rank", "4", "--checkpoint-every", "2", "--sigma-mid", "0.4"]
    assert main(args + ["--steps", "4"]) == 0
    for name in ("step1_lora.safetensors", "step2_lora.safetensors", "z_image_2step_bundle.safetensors", "teacher_cache.safetensors", "checkpoint"):
        assert (out / name).exists(), name
    bundle = load_bundle(str(out / "z_image_2step_bundle.safetensors"))
    assert bundle.settings.sigma_mid == 0.4 and bundle.settings.shift == 3.0
    assert {p.dtype for p in bundle.module.parameters()} == {torch.bfloat16}
    capsys.readouterr()
    assert main(args + ["--steps", "6"]) == 0
    assert "resumed at step 4" in capsys.readouterr().err
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 6


def test_a_cache_or_checkpoint_made_with_another_teacher_is_not_reused(teacher_files, tmp_path):
    """The cache key and the checkpoint's settings hold which teacher and text encoder made them
    (files_identity): the same --out with another teacher remakes the cache and refuses to resume."""
    from safetensors import safe_open

    from zimage_pack.train.distill import files_identity

    transformer, encoder, _ = teacher_files
    other = tmp_path / "other_teacher.safetensors"
    other.write_bytes(open(transformer, "rb").read()[:-8] + b"\x00" * 8)
    first, second = files_identity(transformer, encoder), files_identity(str(other), encoder)
    assert first != second and first == files_identity(transformer, encoder)
    trainer = _trainer(teacher_files, tmp_path / "out", steps=2, w_adv=0.0, models=first)
    trainer.train(progress=False)
    cache = tmp_path / "out" / "teacher_cache.safetensors"
    with pytest.raises(ValueError, match=r"other settings \(models\)"):
        _trainer(teacher_files, tmp_path / "out", steps=2, w_adv=0.0, models=second)
    with safe_open(str(cache), "pt") as handle:
        assert json.loads(handle.metadata()["key"])["models"] == second  # the cache was made again for the other teacher
