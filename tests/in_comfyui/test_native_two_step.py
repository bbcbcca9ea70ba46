"""The 2-step step-decoupled sampler and step bundles on native MODELs (nodes/native_two_step.py,
nodes/two_step_nodes.py): two LoRA chains on one UNETLoader MODEL against an independent float32
computation of the two steps (the pack's diffusers engine on the same weights with each step's LoRA
merged, driven by a loop written here from the formulas); bundle round trips between the ComfyUI side and
the engine; the per-step LoRAs zimage-distill writes, through native LoRA loading; failed nodes."""

import gc
import logging
import os
import re
import time

import pytest
import torch

import comfy.lora
import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
from diffusers import ZImageTransformer2DModel
from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers
from safetensors.torch import save_file
from zimage_pack.loaders import demo_loras
from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.lora_merge import prepare_lora, sync_lora_stack
from zimage_pack.loaders.step_decoupled import StepSettings, effective_state_dicts, load_bundle
from zimage_pack.nodes import comfy_services as services
from zimage_pack.nodes.native_two_step import PREFIX, load_step_bundle_native, sample_two_step_native, swap_keys
from zimage_pack.nodes.two_step_nodes import ZImageSaveStepBundle, ZImageStepBundleLoader, ZImageTwoStepSampler
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.samplers.turbo import predict_velocity
from zimage_pack.train.distill import LORA_TARGETS, DistillConfig
from zimage_pack.train.outputs import write_loras

LATENT = torch.zeros(1, 16, 8, 8)  # 64×64 pixels
SCALE, SHIFT_FACTOR = 0.3611, 0.1159  # the FLUX VAE's latent scaling (DESIGN.md)
FEATURES = torch.randn(6, 32, generator=torch.Generator().manual_seed(3))
POSITIVE = [[FEATURES[None], {}]]
THIN = dict(dim=3840, n_layers=1, n_refiner_layers=2, n_heads=30, n_kv_heads=30, cap_feat_dim=32, axes_dims=[32, 48, 48])  # conftest's
BAR = 1e-3  # relative to the largest value of the reference (the bar)


def _relative(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(scope="module", autouse=True)
def _unpatched_afterwards():
    """ComfyUI leaves the last loaded clone's patches in the shared weights; unload so later tests see the base."""
    yield
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def bundle_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zimage_bundles")
    folder_paths.add_model_folder_path(services.BUNDLE_FOLDER, str(folder), is_default=True)
    return folder


@pytest.fixture(scope="module")
def shapes_only():
    """The thin model's diffusers module without weights (meta): names and shapes for writing LoRAs."""
    with torch.device("meta"):
        return ZImageTransformer2DModel(**{**dm.TINY_TRANSFORMER, **THIN})


@pytest.fixture(scope="module")
def step_loras(shapes_only, tmp_path_factory):
    """Step 1's LoRA on the main layer (ai-toolkit names), step 2's on the noise refiner and the main layer (PEFT names)."""
    folder = tmp_path_factory.mktemp("step_loras")
    one, two = str(folder / "step1.safetensors"), str(folder / "step2.safetensors")
    demo_loras.write_lora(shapes_only, one, "ai-toolkit", seed=1)
    demo_loras.write_lora(shapes_only, two, "peft", seed=2, blocks=("noise_refiner", "layers"))
    return one, two


def _noises(shape, seed):
    generator = torch.manual_seed(seed)  # ComfyUI's noise for the seed, then the next draw (the re-noise)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def _reference(engine, step_loras, seed, settings):
    """Both steps in float32 on the engine, each step's LoRA merged, from the formulas: σ' = 3σ / (1 + 2σ),
    v = −model(x, 1 − σ); step 1 from σ0 = 1, x0 = x − σ·v; Euler to σ_mid or x0 re-noised; step 2 x0 = x − σ_mid·v."""
    s0 = 1.0
    s1 = settings.shift * settings.sigma_mid / (1 + (settings.shift - 1) * settings.sigma_mid)
    noise, renoise = _noises(LATENT.shape, seed)
    x = noise

    def velocity(path, x, sigma):
        sync_lora_stack(engine.module, (prepare_lora(engine.module, path, 1.0)[0],))
        try:
            return predict_velocity(engine, x, sigma, [FEATURES], None)
        finally:
            sync_lora_stack(engine.module, ())

    with torch.no_grad():
        v = velocity(step_loras[0], x, s0)
        x0_1 = x - s0 * v
        x = x + (s1 - s0) * v if settings.step2_rule == "euler" else s1 * renoise + (1 - s1) * x0_1
        x0 = x - s1 * velocity(step_loras[1], x, s1)
    return x0 / SCALE + SHIFT_FACTOR, x0_1 / SCALE + SHIFT_FACTOR


def _chains(base, step_loras):
    """Two native LoRA chains on one MODEL (what LoraLoaderModelOnly makes: comfy.sd.load_lora_for_models)."""
    return tuple(comfy.sd.load_lora_for_models(base, None, comfy.utils.load_torch_file(path), 1.0, 0)[0] for path in step_loras)


def _patch_state(models):
    return [(m.patches_uuid, {k: list(v) for k, v in m.patches.items()}) for m in models]


# The machine these run on is small: the bundle, swap and trainer-LoRA checks run first on a bf16 base
# (ComfyUI's --bf16-unet choice, 1.8 GB), freed before the float32 checks load the float32 models.
@pytest.fixture(scope="class")
def base16(model_file):
    model = comfy.sd.load_diffusion_model(model_file, model_options={"dtype": torch.bfloat16})
    yield model
    comfy.model_management.unload_all_models()
    del model
    gc.collect()


@pytest.fixture(scope="class")
def chains16(base16, step_loras):
    return _chains(base16, step_loras)


class TestOnABf16Base:
    def test_the_swap_between_clones_rewrites_only_their_patched_weights(self, base16, chains16):
        """Measured on the CPU: ComfyUI's load of the step-2 clone unpatches step 1's weights and patches step 2's; the rest stays."""
        comfy.model_management.unload_all_models()
        comfy.model_management.load_models_gpu([chains16[0]])
        before = {k: v.data_ptr() for k, v in base16.model.state_dict().items()}
        start = time.perf_counter()
        comfy.model_management.load_models_gpu([chains16[1]])
        seconds = time.perf_counter() - start
        after = {k: v.data_ptr() for k, v in base16.model.state_dict().items()}
        changed = {k for k in before if before[k] != after[k]}
        expected = swap_keys(*chains16)
        assert expected["shared_base"] and changed == set(expected["keys"]) == set(chains16[0].patches) | set(chains16[1].patches)
        assert len(changed) < len(before) / 2
        print(f"\nswap on CPU: {len(changed)} of {len(before)} weights, {expected['bytes'] / 2**20:.0f} MiB, {seconds:.2f} s")

    def test_bundle_round_trip_equals_the_two_chain_run_and_loads_in_the_engine(self, base16, chains16, bundle_folder):
        settings = StepSettings(0.4, 3.0, "x0_renoise")
        from_chains = sample_two_step_native(*chains16, POSITIVE, {"samples": LATENT.clone()}, 5, settings, disable_pbar=True)
        path = ZImageSaveStepBundle.execute(*chains16, "chains", 0.4, 3.0, "x0_renoise").result[0]
        assert os.path.dirname(path) == str(bundle_folder)
        # the engine reads the bundle, tensor for tensor: each step's weights as ComfyUI patches them
        loaded = load_bundle(path)
        assert loaded.settings == settings
        for model, want in zip(chains16, effective_state_dicts(loaded)):
            comfy.model_management.unload_all_models()
            comfy.model_management.load_models_gpu([model])  # ComfyUI's own patching of this step's weights
            state = {k[len(PREFIX):]: v for k, v in base16.model.state_dict().items() if k.startswith(PREFIX)}
            got = convert_z_image_transformer_checkpoint_to_diffusers(state)
            assert set(got) == set(want)
            assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])][:3]
        del loaded, got, want, state
        comfy.model_management.unload_all_models()
        gc.collect()
        # and ComfyUI reads it back: one model, step 2 a clone carrying its tensors as patches (held in bf16 like the base)
        one, two, settings_back = load_step_bundle_native(path, {"dtype": torch.bfloat16})
        assert settings_back == settings
        assert one.is_clone(two) and not one.patches and len(two.patches) == len(swap_keys(*chains16)["keys"])
        from_bundle = ZImageTwoStepSampler.execute(one, two, POSITIVE, {"samples": LATENT.clone()}, 5, 0.4, 3.0, "x0_renoise").result
        for a, b in zip(from_bundle, from_chains):
            assert torch.equal(a["samples"], b["samples"])
        del one, two
        comfy.model_management.unload_all_models()
        gc.collect()
        # the node: the bundle's settings as outputs
        one, two, sigma_mid, shift, rule = ZImageStepBundleLoader.execute("chains.safetensors").result
        assert (sigma_mid, shift, rule) == (0.4, 3.0, "x0_renoise") and one.is_clone(two)
        del one, two
        gc.collect()

    def test_zimage_distill_loras_load_natively_with_every_key_applied(self, base16, shapes_only, tmp_path, caplog):
        """The trainer's own writer (train/outputs.write_loras) on adapters of the trainer's targets (train/distill.LORA_TARGETS),
        in the names get_peft_model_state_dict gives them, on the thin model; loaded with native comfy.sd.load_lora_for_models."""
        targets = {n: m for n, m in shapes_only.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(LORA_TARGETS, n)}
        assert any(n.startswith("all_final_layer") for n in targets) and any(n.startswith("t_embedder") for n in targets)
        g = torch.Generator().manual_seed(0)
        states = {step: {k: v for n, m in targets.items() for k, v in
                         ((f"transformer.{n}.lora_A.weight", 0.01 * torch.randn(4, m.in_features, generator=g)),
                          (f"transformer.{n}.lora_B.weight", 0.01 * torch.randn(m.out_features, 4, generator=g)))} for step in ("step1", "step2")}
        paths = write_loras(states, str(tmp_path), DistillConfig(out=str(tmp_path), prompts=[], rank=4))
        comfy.model_management.unload_all_models()
        for step, path in paths.items():
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                patched, _ = comfy.sd.load_lora_for_models(base16, None, comfy.utils.load_torch_file(path), 1.0, 0)
            assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()], caplog.text
            assert sum(len(p) for p in patched.patches.values()) == len(targets)  # one patch per adapted layer
            # a weight ComfyUI patches is W + B·A (PEFT alpha = rank: scale 1), rounded to bf16
            key = "t_embedder.mlp.0.weight"
            got = patched.patch_weight_to_device(PREFIX + key, return_weight=True).float()
            lora = states[step]
            want = base16.model.state_dict()[PREFIX + key].float() + lora["transformer.t_embedder.mlp.0.lora_B.weight"] @ lora["transformer.t_embedder.mlp.0.lora_A.weight"]
            assert (got - want).abs().max().item() <= 2 ** -7 * want.abs().max().item()
            assert (got - base16.model.state_dict()[PREFIX + key].float()).abs().max().item() > 1e-4

    def test_failed_nodes_leave_their_inputs_unchanged(self, base16, chains16, bundle_folder):
        before = _patch_state(chains16)
        with pytest.raises(ZImageInputError, match="latent_image"):
            ZImageTwoStepSampler.execute(*chains16, POSITIVE, {"samples": torch.zeros(1, 4, 8, 8)}, 1)
        with pytest.raises(ZImageInputError, match="sigma_mid"):
            ZImageTwoStepSampler.execute(*chains16, POSITIVE, {"samples": LATENT.clone()}, 1, 1.0)
        object_patched = chains16[1].clone()
        object_patched.add_object_patch("diffusion_model.t_embedder", torch.nn.Identity())
        with pytest.raises(ZImageInputError, match="object patches"):
            ZImageSaveStepBundle.execute(chains16[0], object_patched, "refused", 0.5, 3.0, "euler")
        assert not os.path.exists(bundle_folder / "refused.safetensors")
        assert _patch_state(chains16) == before and not base16.patches
        plain = bundle_folder / "plain.safetensors"
        save_file({"x": torch.zeros(1)}, str(plain))
        with pytest.raises(ZImageInputError, match="not a 2-step bundle"):
            ZImageStepBundleLoader.execute("plain.safetensors")


@pytest.fixture(scope="module")
def references(model_file, step_loras):
    """The float32 reference for both rules, computed before the float32 native model is loaded (then freed)."""
    engine32 = load_transformer(model_file, weight_dtype="fp32", compute_dtype="fp32")
    try:
        return {rule: _reference(engine32, step_loras, 7, StepSettings(0.5, 3.0, rule)) for rule in ("euler", "x0_renoise")}
    finally:
        del engine32
        gc.collect()


def test_two_lora_chains_on_one_base_equal_the_float32_reference(references, step_loras, request):
    """UNETLoader's MODEL: ComfyUI on the CPU holds the thin model in float32 (it upcasts the bf16 file) and computes in
    float32 (checked here), each LoRA patched in float32; the reference merges each LoRA into float32 weights too (merged
    into bf16 storage the LoRA would be rounded: ~4e-3 off). Both rules, within the issue's 1e-3 relative."""
    native = request.getfixturevalue("native")  # only now: pytest would make the session's model before the reference
    assert native.model.get_dtype_inference() == torch.float32
    assert native.model.diffusion_model.layers[0].attention.qkv.weight.dtype == torch.float32
    chains = _chains(native, step_loras)
    for rule in ("euler", "x0_renoise"):
        final, step1 = ZImageTwoStepSampler.execute(*chains, POSITIVE, {"samples": LATENT.clone()}, 7, 0.5, 3.0, rule).result
        want_final, want_step1 = references[rule]
        error, error1 = _relative(final["samples"], want_final), _relative(step1["samples"], want_step1)
        print(f"\n{rule}: relative {error:.2e} (final), {error1:.2e} (step 1)")
        assert error <= BAR and error1 <= BAR
    # the LoRAs matter far beyond the bound: each step with the other's LoRA gives another picture
    swapped = sample_two_step_native(chains[1], chains[0], POSITIVE, {"samples": LATENT.clone()}, 7, StepSettings(0.5, 3.0, "x0_renoise"),
                                     disable_pbar=True)[0]["samples"]
    assert _relative(swapped, want_final) > 20 * BAR
    assert not native.patches  # the base MODEL is unchanged
