"""2-step step-decoupled generation: schedule, per-step parameters, bundles, rules, bad inputs."""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from zimage_pack.loaders import demo_loras, demo_models as dm
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.lora_merge import prepare_lora
from zimage_pack.loaders.param_sets import swap_state
from zimage_pack.loaders.step_decoupled import BUNDLE_FORMAT, StepSettings, effective_state_dicts, from_models, load_bundle, save_bundle
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.samplers.turbo import sample
from zimage_pack.samplers.two_step import sample_two_step, two_step_sigmas

FEATURES = [torch.randn(5, 32, generator=torch.Generator().manual_seed(0)), torch.randn(8, 32, generator=torch.Generator().manual_seed(1))]
LATENT = torch.zeros(2, 16, 6, 4)


@pytest.fixture(scope="module")
def step2_file(tmp_path_factory, tiny_transformer):
    """A second transformer that differs from the tiny one in layer 1 and the final layer only."""
    other = dm.make_transformer(seed=0)
    with torch.no_grad():
        for name, param in other.named_parameters():
            if name.startswith(("layers.1.", "all_final_layer")):
                param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
    return dm.write_transformer(other, str(tmp_path_factory.mktemp("step2") / "z_image_step2.safetensors"))


def test_default_schedule_is_the_turbo_schedule_for_two_steps():
    from zimage_pack.samplers.schedules import turbo_sigmas

    assert torch.allclose(two_step_sigmas(StepSettings()), turbo_sigmas(2, 3.0))
    assert torch.allclose(two_step_sigmas(StepSettings(0.5, 3.0)), torch.tensor([1.0, 0.75, 0.0]))


def test_same_parameters_and_euler_equal_the_turbo_sampler_path(model_files):
    model = load_transformer(model_files["comfy"])
    settings = StepSettings(0.4, 2.5, "euler")
    final, _ = sample_two_step(from_models(model, model), FEATURES, LATENT, seed=5, settings=settings)
    reference = sample(model, FEATURES, LATENT, seed=5, sigmas=two_step_sigmas(settings))
    assert (final - reference).abs().max() <= 1e-5


def test_step_parameters_are_really_used(model_files, step2_file):
    base = load_transformer(model_files["comfy"])
    other = load_transformer(step2_file)
    plain_final, plain_mid = sample_two_step(from_models(base, base), FEATURES, LATENT, 3, StepSettings())
    # perturbed step 2: same step-1 intermediate, different final
    final, mid = sample_two_step(from_models(base, other), FEATURES, LATENT, 3, StepSettings())
    assert torch.equal(mid, plain_mid) and (final - plain_final).abs().max() > 1e-3
    # perturbed step 1: both change
    final1, mid1 = sample_two_step(from_models(other, base), FEATURES, LATENT, 3, StepSettings())
    assert (mid1 - plain_mid).abs().max() > 1e-3 and (final1 - plain_final).abs().max() > 1e-3
    # and the module is back to its own tensors for a plain run afterwards
    assert torch.equal(sample(base, FEATURES, LATENT, seed=3, steps=2), plain_final)


def test_only_differing_tensors_are_swapped(model_files, step2_file):
    base, other = load_transformer(model_files["comfy"]), load_transformer(step2_file)
    model = from_models(base, other)
    differing = set(model.steps[1].param_set.tensors)
    assert differing and all(n.startswith(("layers.1.", "all_final_layer")) for n in differing)
    assert len(differing) == sum(1 for n in base.module.state_dict() if n.startswith(("layers.1.", "all_final_layer")))
    state = swap_state(base.module)
    swaps = state.swaps
    sample_two_step(model, FEATURES, LATENT, 3, StepSettings())
    assert state.swaps == swaps + 1  # one swap between the steps (step 1 is the module's own)


def test_bundle_round_trip_is_bit_exact_and_stores_shared_tensors_once(model_files, step2_file, tmp_path):
    model = from_models(load_transformer(model_files["comfy"]), load_transformer(step2_file))
    path = str(tmp_path / "bundle.safetensors")
    counts = save_bundle(model, path, StepSettings(0.3, 2.0, "x0_renoise"))
    loaded = load_bundle(path)
    assert loaded.settings == StepSettings(0.3, 2.0, "x0_renoise")
    want1, want2 = effective_state_dicts(model)
    got1, got2 = effective_state_dicts(loaded)
    assert all(torch.equal(got1[k], want1[k]) for k in want1) and all(torch.equal(got2[k], want2[k]) for k in want2)
    # shared tensors once: the bundle is one model plus the differing tensors, not two models
    one_model = os.path.getsize(model_files["comfy"])
    differing = model.differing_bytes
    assert os.path.getsize(path) < one_model + differing + 64 * 1024
    assert os.path.getsize(path) < 1.5 * one_model
    assert counts["per_step"] == len(model.steps[1].param_set.tensors)
    a = sample_two_step(model, FEATURES, LATENT, 9, loaded.settings)
    b = sample_two_step(loaded, FEATURES, LATENT, 9, loaded.settings)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_per_step_lora_form_and_its_bundle(model_files, tmp_path):
    base = load_transformer(model_files["comfy"])
    demo_loras.write_lora(base.module, str(tmp_path / "s1.safetensors"), "ai-toolkit", seed=1)
    demo_loras.write_lora(base.module, str(tmp_path / "s2.safetensors"), "musubi", seed=2, blocks=("noise_refiner",))
    step1 = base.with_lora(prepare_lora(base.module, str(tmp_path / "s1.safetensors"), 1.0)[0])
    step2 = base.with_lora(prepare_lora(base.module, str(tmp_path / "s2.safetensors"), 1.0)[0])
    model = from_models(step1, step2)
    final, mid = sample_two_step(model, FEATURES, LATENT, 4, StepSettings())
    plain_final, plain_mid = sample_two_step(from_models(base, base), FEATURES, LATENT, 4, StepSettings())
    assert (mid - plain_mid).abs().max() > 1e-4 and (final - plain_final).abs().max() > 1e-4
    path = str(tmp_path / "lora_bundle.safetensors")
    save_bundle(model, path)
    keys = load_file(path).keys()
    assert any(k.startswith("step2/noise_refiner.") for k in keys) and any(k.startswith("step1/layers.") for k in keys)
    b_final, b_mid = sample_two_step(load_bundle(path), FEATURES, LATENT, 4, StepSettings())
    assert (b_final - final).abs().max() <= 1e-6 and (b_mid - mid).abs().max() <= 1e-6


def test_renoise_rule_is_reproducible_from_the_seed(model_files):
    model = load_transformer(model_files["comfy"])
    step = from_models(model, model)
    settings = StepSettings(0.5, 3.0, "x0_renoise")
    a = sample_two_step(step, FEATURES, LATENT, 21, settings)[0]
    b = sample_two_step(step, FEATURES, LATENT, 21, settings)[0]
    c = sample_two_step(step, FEATURES, LATENT, 22, settings)[0]
    euler = sample_two_step(step, FEATURES, LATENT, 21, StepSettings(0.5, 3.0, "euler"))[0]
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3 and (a - euler).abs().max() > 1e-3


def _assert_clear(err, *fragments):
    text = str(err)
    assert "found" in text and "expected" in text and "How to fix" in text
    for fragment in fragments:
        assert fragment.lower() in text.lower(), text


def test_bundle_with_mismatched_step_shapes(tmp_path, model_files):
    path = str(tmp_path / "bad.safetensors")
    tensors = {f"shared/{k}": v for k, v in load_transformer(model_files["comfy"]).module.state_dict().items() if "layers.0.feed_forward.w1" not in k}
    tensors["step1/layers.0.feed_forward.w1.weight"] = torch.zeros(170, 64)
    tensors["step2/layers.0.feed_forward.w1.weight"] = torch.zeros(100, 64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": BUNDLE_FORMAT, "format_version": "1", "sigma_mid": "0.5", "shift": "3.0", "step2_rule": "euler"})
    with pytest.raises(ZImageInputError) as info:
        load_bundle(path)
    _assert_clear(info.value, "other shapes", "layers.0.feed_forward.w1.weight")


def test_mismatched_models_for_the_two_steps(model_files, tmp_path):
    small = load_transformer(model_files["comfy"])
    wider = dm.write_transformer(dm.make_transformer(0, dim=96, n_heads=3, axes_dims=[8, 12, 12]), str(tmp_path / "wide.safetensors"))
    with pytest.raises(ZImageInputError) as info:
        from_models(small, load_transformer(wider))
    _assert_clear(info.value, "step2_model", "same architecture")


def test_plain_checkpoint_given_as_bundle(model_files):
    with pytest.raises(ZImageInputError) as info:
        load_bundle(model_files["comfy"])
    _assert_clear(info.value, "not a 2-step bundle", "Transformer Loader")


def test_bundle_of_another_format_version(model_files, tmp_path):
    path = str(tmp_path / "v2.safetensors")
    save_bundle(from_models(*(2 * [load_transformer(model_files["comfy"])])), path)
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(path, "pt") as fh:
        meta = dict(fh.metadata())
    meta["format_version"] = "2"
    save_file(tensors, path, metadata=meta)
    with pytest.raises(ZImageInputError) as info:
        load_bundle(path)
    _assert_clear(info.value, "version '2'", "version 1")


@pytest.mark.parametrize("sigma_mid", [0.0, 1.0, -0.2, 1.5])
def test_sigma_mid_outside_open_interval(model_files, sigma_mid):
    model = load_transformer(model_files["comfy"])
    with pytest.raises(ZImageInputError) as info:
        sample_two_step(from_models(model, model), FEATURES, LATENT, 1, StepSettings(sigma_mid))
    _assert_clear(info.value, "sigma_mid", "between 0 and 1")


def test_two_step_loop_follows_the_formulas_on_plain_callables():
    """The shared arithmetic on two velocity functions (what the engine and the ComfyUI side both drive)."""
    from zimage_pack.samplers.two_step import two_step_loop

    x = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    renoise = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = []
    f1 = lambda x, s: (seen.append(("one", s)), 0.5 * x + s)[1]
    f2 = lambda x, s: (seen.append(("two", s)), -0.25 * x)[1]
    for rule in ("euler", "x0_renoise"):
        seen.clear()
        steps = []
        final, mid = two_step_loop(f1, f2, x, (1.0, 0.75, 0.0), rule, renoise, callback=lambda i, n, x0, steps=steps: steps.append(i))
        v1 = 0.5 * x + 1.0
        x0_1 = x - v1
        x_mid = x - 0.25 * v1 if rule == "euler" else 0.75 * renoise + 0.25 * x0_1
        assert torch.allclose(mid, x0_1) and torch.allclose(final, x_mid - 0.75 * (-0.25 * x_mid))
        assert seen == [("one", 1.0), ("two", 0.75)] and steps == [0, 1]


def test_module_holds_one_step_set_at_a_time(model_files, step2_file):
    from zimage_pack.loaders.param_sets import prepare_weights

    base, other = load_transformer(model_files["comfy"]), load_transformer(step2_file)
    model = from_models(base, other)
    name = next(iter(model.steps[1].param_set.tensors))
    own = base.module.get_parameter(name).data_ptr()
    prepare_weights(model.steps[1])
    state = swap_state(base.module)
    assert base.module.get_parameter(name).data_ptr() == model.steps[1].param_set.tensors[name].data_ptr()
    assert state.own_on_host[name].data_ptr() == own  # step 1's tensor waits on the host, not beside step 2's
    prepare_weights(model.steps[0])
    assert base.module.get_parameter(name).data_ptr() == own and state.own_on_host == {}


def test_interrupt_between_the_two_steps(model_files):
    model = load_transformer(model_files["comfy"])
    calls = []

    def interrupt():
        calls.append(1)
        raise KeyboardInterrupt("Processing interrupted")

    with pytest.raises(KeyboardInterrupt):
        sample_two_step(from_models(model, model), FEATURES, LATENT, 1, StepSettings(), check_interrupt=interrupt)
    assert calls == [1]
    final, _ = sample_two_step(from_models(model, model), FEATURES, LATENT, 1, StepSettings())
    assert torch.isfinite(final).all()
