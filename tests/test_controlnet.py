"""Fun ControlNet Union: version detection, hints against diffusers, the reference's refiner hints,
strength and range, inpaint input, image fitting, refusals."""

import copy

import pytest
import torch
from diffusers import ZImageControlNetModel
from safetensors.torch import save_file

import published_controlnets as published
from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders.controlnet import load_controlnet
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.loaders.vae import load_vae
from zimage_pack.samplers.control import ControlSpec, build_control_input, fit_image, forward_with_control
from zimage_pack.samplers.latents import to_model_space
from zimage_pack.samplers.turbo import sample

VERSIONS = ["1.0", "2.0", "2.1", "2.1 lite"]
# one published file per version (tests/published_controlnets.py writes them key by key from the published layouts)
FILE_OF = {"1.0": "Z-Image-Turbo-Fun-Controlnet-Union.safetensors", "2.0": "Z-Image-Turbo-Fun-Controlnet-Union-2.0.safetensors",
           "2.1": "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors", "2.1 lite": "Z-Image-Turbo-Fun-Controlnet-Union-2.1-lite-2601-8steps.safetensors"}
# diffusers' ZImageControlNetModel config of each version, from VideoX-Fun's yamls and diffusers' hub configs
# (independent of the pack's loader); 2.0's refiner is never run ("control_layers" gives its hints)
REFERENCE_CONFIG = {
    "1.0": dict(control_layers_places=published.PLACES[6], control_refiner_layers_places=None, control_in_dim=16, add_control_noise_refiner=None),
    "2.0": dict(control_layers_places=published.PLACES[15], control_refiner_layers_places=[0, 1], control_in_dim=33, add_control_noise_refiner="control_layers"),
    "2.1": dict(control_layers_places=published.PLACES[15], control_refiner_layers_places=[0, 1], control_in_dim=33, add_control_noise_refiner="control_noise_refiner"),
    "2.1 lite": dict(control_layers_places=published.PLACES[3], control_refiner_layers_places=[0, 1], control_in_dim=33, add_control_noise_refiner="control_noise_refiner"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnets")
    out = {v: published.write_published(str(root), FILE_OF[v], dtype=torch.float32, seed=3) for v in VERSIONS}
    out["published"] = {name: published.write_published(str(root / "all"), name, seed=5) for name in published.PUBLISHED}
    # a transformer deep enough for the real hint places (30 layers), still tiny
    out["transformer"] = dm.write_transformer(dm.make_transformer(seed=4, n_layers=30, n_refiner_layers=2), str(root / "z_image_30_layers.safetensors"))
    return out


@pytest.fixture(scope="module")
def transformer(files):
    return load_transformer(files["transformer"])


def _inputs(batch=1, h=6, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(16, 1, h, w, generator=g) for _ in range(batch)]
    caps = [torch.randn(5 + 3 * i, 32, generator=g) for i in range(batch)]
    return x, torch.full((batch,), 0.3), caps


@pytest.mark.parametrize("name", sorted(published.PUBLISHED))
def test_every_published_file_is_detected_with_its_hint_places(files, name):
    cnet = load_controlnet(files["published"][name])
    layers, in_dim, _ = published.PUBLISHED[name]
    assert cnet.version == published.expected_version(name)
    assert cnet.control_in_dim == in_dim and cnet.module.control_layers_places == published.PLACES[layers]


def test_orchestrated_forward_without_controls_is_the_transformer(transformer):
    x, t, caps = _inputs(batch=2)
    ours = forward_with_control(transformer.module, x, t, caps, [])
    ref = transformer.module(x, t, caps, return_dict=False)[0]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, ref))


def _reference_cnet(path, transformer, version):
    """diffusers' own ControlNet with the version's published config and diffusers' own single-file
    conversion of the file: nothing of the pack's loader."""
    from diffusers.loaders.single_file_utils import convert_z_image_controlnet_checkpoint_to_diffusers
    from safetensors.torch import load_file

    config = dict(REFERENCE_CONFIG[version], dim=64, n_heads=2, n_kv_heads=2)
    ref = ZImageControlNetModel(**config)
    ref.load_state_dict(convert_z_image_controlnet_checkpoint_to_diffusers(load_file(path), config), strict=True)
    ref.gradient_checkpointing = False  # diffusers' forward reads it; from_pretrained would have set it
    return ZImageControlNetModel.from_transformer(ref.eval(), transformer.module)


@pytest.mark.parametrize("version", ["1.0", "2.0", "2.1", "2.1 lite"])
def test_hints_equal_diffusers_controlnet(files, transformer, version):
    cnet = load_controlnet(files[version])
    x, t, caps = _inputs(batch=2)
    control = torch.randn(2, cnet.control_in_dim, 6, 4, generator=torch.Generator().manual_seed(7))
    record = {}
    forward_with_control(transformer.module, x, t, caps, [(cnet, control, 0.8)], record)
    ref = _reference_cnet(files[version], transformer, version)(x, t, caps, list(control.unsqueeze(2).unbind(0)), conditioning_scale=0.8)
    assert set(record["main"]) == set(ref)
    err = max((record["main"][k] - ref[k]).abs().max().item() for k in ref)
    assert err <= 1e-4, err
    assert max(h.abs().max().item() for h in ref.values()) > 1e-3  # the hints are not trivially zero


def test_v1_output_equals_diffusers_transformer_with_the_hints(files, transformer):
    cnet = load_controlnet(files["1.0"])
    x, t, caps = _inputs(batch=1)
    control = torch.randn(1, 16, 6, 4, generator=torch.Generator().manual_seed(8))
    ours = forward_with_control(transformer.module, x, t, caps, [(cnet, control, 0.75)])
    hints = _reference_cnet(files["1.0"], transformer, "1.0")(x, t, caps, list(control.unsqueeze(2).unbind(0)), conditioning_scale=0.75)
    ref = transformer.module(x, t, caps, controlnet_block_samples=hints, return_dict=False)[0]
    assert torch.allclose(ours[0], ref[0], atol=1e-4)


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.1 lite"])
def test_refiner_hints_go_into_the_main_noise_refiner(files, transformer, version):
    """The reference adds 2.x's refiner hints into the main noise refiner; diffusers' pipeline does not.
    diffusers' own transformer forward, with those hints added after its noise-refiner blocks (hooks)
    and diffusers' ControlNet hints after the main layers, gives our output; without the hooks it differs."""
    cnet = load_controlnet(files[version])
    x, t, caps = _inputs(batch=1)
    control = torch.randn(1, 33, 6, 4, generator=torch.Generator().manual_seed(9))
    record = {}
    ours = forward_with_control(transformer.module, x, t, caps, [(cnet, control, 0.9)], record)
    (refiner_hints,) = record["refiner"]
    assert set(refiner_hints) == {0, 1} and all(h.abs().max() > 1e-3 for h in refiner_hints.values())
    hints = _reference_cnet(files[version], transformer, version)(x, t, caps, list(control.unsqueeze(2).unbind(0)), conditioning_scale=0.9)
    diffusers_pipeline_way = transformer.module(x, t, caps, controlnet_block_samples=hints, return_dict=False)[0]
    handles = [block.register_forward_hook(lambda mod, args, out, i=i: out + refiner_hints[i]) for i, block in enumerate(transformer.module.noise_refiner)]
    try:
        reference_way = transformer.module(x, t, caps, controlnet_block_samples=hints, return_dict=False)[0]
    finally:
        for handle in handles:
            handle.remove()
    assert torch.allclose(ours[0], reference_way[0], atol=1e-4)
    assert (ours[0] - diffusers_pipeline_way[0]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def vae(model_files):
    return load_vae(model_files["vae_bfl"])


def _spec(cnet, vae, **kw):
    image = torch.rand(1, 48, 32, 3, generator=torch.Generator().manual_seed(1))
    return ControlSpec(controlnet=cnet, vae=vae, image=image, **{"strength": 0.8, **kw})


def test_strength_zero_is_exactly_no_controlnet(files, transformer, vae):
    features, latent = [torch.randn(5, 32)], torch.zeros(1, 16, 6, 4)
    plain = sample(transformer, features, latent, seed=1, steps=3)
    off = sample(transformer.with_control(_spec(load_controlnet(files["2.1"]), vae, strength=0.0)), features, latent, seed=1, steps=3)
    on = sample(transformer.with_control(_spec(load_controlnet(files["2.1"]), vae)), features, latent, seed=1, steps=3)
    assert torch.equal(plain, off) and (plain - on).abs().max() > 1e-3


def test_start_and_end_percent_control_the_steps_comfyui_controls(files, transformer, vae):
    """ComfyUI's rule (percent_to_sigma: the unshifted time, then the shift): with shift 3 and 8 steps,
    start 0.3 / end 0.6 is σ 0.875 … 0.667, so steps 4 and 5 (σ 0.833, 0.75) are controlled. The old rule
    (progress = 1 − shifted σ) controlled steps 6 and 7 instead."""
    features, latent = [torch.randn(5, 32)], torch.zeros(1, 16, 6, 4)
    seen = {"plain": [], "ranged": []}
    calls = []
    spec = _spec(load_controlnet(files["1.0"]), vae, start=0.3, end=0.6)
    original = spec.active_at
    spec.active_at = lambda sigma, shift=3.0: calls.append(original(sigma, shift)) or calls[-1]
    sample(transformer, features, latent, seed=2, steps=8, on_step=lambda i, n, x0: seen["plain"].append(x0.clone()))
    sample(transformer.with_control(spec), features, latent, seed=2, steps=8, on_step=lambda i, n, x0: seen["ranged"].append(x0.clone()))
    assert [i + 1 for i, on in enumerate(calls) if on] == [4, 5]
    for i in range(3):  # before the range: untouched
        assert torch.equal(seen["plain"][i], seen["ranged"][i]), i
    assert (seen["plain"][3] - seen["ranged"][3]).abs().max() > 1e-4


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
def test_percent_to_sigma_is_comfyuis_formula_at_the_ends_and_inside(shift):
    from zimage_pack.samplers.schedules import percent_to_sigma

    assert percent_to_sigma(0.0, shift) == 1.0 and percent_to_sigma(1.0, shift) == 0.0
    assert percent_to_sigma(0.3, 3.0) == pytest.approx(0.875) and percent_to_sigma(0.6, 3.0) == pytest.approx(2 / 3)
    values = [percent_to_sigma(p / 20, shift) for p in range(21)]
    assert values == sorted(values, reverse=True)


def test_inpaint_input_is_built_like_the_reference(files, vae):
    cnet = load_controlnet(files["2.1"])
    image = torch.rand(1, 48, 32, 3, generator=torch.Generator().manual_seed(2))
    inpaint = torch.rand(1, 48, 32, 3, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 48, 32)
    mask[:, :24] = 1.0  # repaint the top half
    spec = ControlSpec(cnet, vae, image, 0.9, inpaint_image=inpaint, mask=mask)
    built = build_control_input(spec, 1, 6, 4)
    assert built.shape == (1, 33, 6, 4)
    from zimage_pack.loaders.vae import encode

    assert torch.allclose(built[:, :16], to_model_space(encode(vae, image)), atol=1e-5)
    assert torch.equal(built[0, 16, :3], torch.zeros(3, 4)) and torch.equal(built[0, 16, 3:], torch.ones(3, 4))  # 1 - mask
    greyed = inpaint.clone()
    greyed[:, :24] = 0.5
    assert torch.allclose(built[:, 17:], to_model_space(encode(vae, greyed)), atol=1e-5)
    no_mask = build_control_input(ControlSpec(cnet, vae, image, 0.9), 1, 6, 4)
    assert torch.equal(no_mask[:, 16], torch.zeros(1, 6, 4))
    grey = torch.full((1, 48, 32, 3), 0.5)
    assert torch.allclose(no_mask[:, 17:], to_model_space(encode(vae, grey)), atol=1e-5)


def test_mask_changes_what_is_repainted(files, transformer, vae):
    cnet = load_controlnet(files["2.1"])
    features, latent = [torch.randn(5, 32)], torch.zeros(1, 16, 6, 4)
    inpaint = torch.rand(1, 48, 32, 3, generator=torch.Generator().manual_seed(4))
    top, bottom = torch.zeros(1, 48, 32), torch.zeros(1, 48, 32)
    top[:, :24], bottom[:, 24:] = 1, 1
    runs = [sample(transformer.with_control(ControlSpec(cnet, vae, None, 0.9, inpaint_image=inpaint, mask=m)), features, latent, seed=3, steps=2) for m in (top, bottom)]
    assert (runs[0] - runs[1]).abs().max() > 1e-4


def test_hint_image_of_another_size_and_batch(vae):
    image = torch.rand(1, 30, 50, 3)
    crop = fit_image(image, 48, 32, 3, "crop")
    stretch = fit_image(image, 48, 32, 3, "stretch")
    assert crop.shape == stretch.shape == (3, 48, 32, 3)
    assert torch.equal(crop[0], crop[2]) and not torch.allclose(crop, stretch)
    two = torch.rand(2, 48, 32, 3)
    assert torch.equal(fit_image(two, 48, 32, 3, "stretch")[2], fit_image(two, 48, 32, 3, "stretch")[0])


def test_controls_with_lora_and_the_two_step_sampler(files, transformer, vae, tmp_path):
    from zimage_pack.loaders import demo_loras
    from zimage_pack.loaders.lora_merge import prepare_lora
    from zimage_pack.loaders.step_decoupled import StepSettings, from_models
    from zimage_pack.samplers.two_step import sample_two_step

    cnet = load_controlnet(files["2.1 lite"])
    demo_loras.write_lora(transformer.module, str(tmp_path / "l.safetensors"), "ai-toolkit")
    with_lora = transformer.with_lora(prepare_lora(transformer.module, str(tmp_path / "l.safetensors"), 1.0)[0])
    controlled = with_lora.with_control(_spec(cnet, vae))
    features, latent = [torch.randn(5, 32)], torch.zeros(2, 16, 6, 4)
    a = sample_two_step(from_models(controlled, controlled), features * 2, latent, 5, StepSettings())[0]
    b = sample_two_step(from_models(with_lora, with_lora), features * 2, latent, 5, StepSettings())[0]
    assert a.shape == (2, 16, 6, 4) and (a - b).abs().max() > 1e-4
    sample(transformer, features, latent[:1], seed=0, steps=1)  # LoRA removed again for later tests


@pytest.mark.parametrize("kind", ["lora", "transformer", "sd_controlnet"])
def test_other_files_are_refused(files, tmp_path, kind):
    path = str(tmp_path / f"{kind}.safetensors")
    if kind == "lora":
        save_file({"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 64)}, path)
        expect = "LoRA"
    elif kind == "transformer":
        path = files["transformer"]
        expect = "unknown model"
    else:
        save_file({"controlnet_cond_embedding.conv_in.weight": torch.zeros(4, 4), "input_blocks.0.0.weight": torch.zeros(4, 4)}, path)
        expect = "Stable Diffusion"
    with pytest.raises(ZImageInputError) as info:
        load_controlnet(path)
    assert expect.lower() in str(info.value).lower() and "How to fix" in str(info.value)


def test_unknown_fun_layout_is_refused(files, tmp_path):
    from safetensors.torch import load_file

    state = load_file(files["2.1"])
    state = {k: v for k, v in state.items() if not k.startswith(("control_layers.13.", "control_layers.14."))}
    path = str(tmp_path / "odd.safetensors")
    save_file(state, path)
    with pytest.raises(ZImageInputError) as info:
        load_controlnet(path)
    assert "does not know" in str(info.value)


def test_canny_finds_a_step_edge_and_nothing_else():
    from zimage_pack.samplers.preprocess import canny

    image = torch.zeros(1, 32, 32, 3)
    image[:, :, 16:] = 1.0
    edges = canny(image, 0.2, 0.5)
    assert edges.shape == (1, 32, 32, 3) and set(edges.unique().tolist()) <= {0.0, 1.0}
    columns = edges[0, :, :, 0].sum(0)
    assert columns[15:17].sum() >= 32 and columns[:13].sum() == 0 and columns[19:].sum() == 0
    with pytest.raises(ZImageInputError):
        canny(image, 0.6, 0.5)


def test_gray_and_scribble():
    from zimage_pack.samplers.preprocess import gray, scribble

    image = torch.tensor([[[[1.0, 0.0, 0.0], [0.1, 0.1, 0.1]]]])
    g = gray(image)
    assert torch.allclose(g[0, 0, 0], torch.full((3,), 0.299)) and torch.allclose(g[0, 0, 1], torch.full((3,), 0.1))
    s = scribble(image, 0.2)
    assert torch.equal(s[0, 0, 0], torch.zeros(3)) and torch.equal(s[0, 0, 1], torch.ones(3))


def test_stacked_controls_on_the_engine_leave_the_input_model_unchanged(files, transformer, vae):
    """The engine's ControlNet stack (``with_control``); the node's input checks are ComfyUI-side now
    (tests/in_comfyui/test_native_control.py)."""
    v1, v21 = load_controlnet(files["1.0"]), load_controlnet(files["2.1"])
    image = torch.rand(1, 48, 32, 3)
    depth = transformer.with_control(ControlSpec(v21, vae, image, v21.default_strength))
    both = depth.with_control(ControlSpec(v1, vae, image, 0.5))
    assert transformer.controls == () and len(both.controls) == 2
    assert both.controls[0].strength == 0.9 and both.controls[1].strength == 0.5  # version default, then explicit
    features, latent = [torch.randn(5, 32)], torch.zeros(1, 16, 6, 4)
    stacked = sample(both, features, latent, seed=1, steps=2)
    single = sample(depth, features, latent, seed=1, steps=2)
    assert (stacked - single).abs().max() > 1e-4


def test_fp8_controlnet_keeps_fp8(files, transformer):
    cnet = load_controlnet(files["2.1"], "fp8_e4m3fn")
    assert cnet.module.control_layers[0].attention.to_q.weight.dtype == torch.float8_e4m3fn
    x, t, caps = _inputs()
    control = torch.randn(1, 33, 6, 4)
    bf16_model = copy.deepcopy(transformer.module).to(torch.bfloat16)
    out = forward_with_control(bf16_model, [xi.bfloat16() for xi in x], t, [c.bfloat16() for c in caps], [(cnet, control.bfloat16(), 0.9)])
    assert torch.isfinite(out[0].float()).all()


def test_offloaded_controlnet_gives_the_same_hints(files, transformer):
    """Group offloading (leaf level) fires on the blocks the pack calls one by one (CPU as the onload device here)."""
    from zimage_pack.loaders.controlnet import enable_offload

    x, t, caps = _inputs()
    control = torch.randn(1, 33, 6, 4, generator=torch.Generator().manual_seed(3))
    plain = forward_with_control(transformer.module, x, t, caps, [(load_controlnet(files["2.1"]), control, 0.9)])
    offloaded = load_controlnet(files["2.1"], offload=True)
    enable_offload(offloaded, torch.device("cpu"))
    hooked = forward_with_control(transformer.module, x, t, caps, [(offloaded, control, 0.9)])
    assert torch.allclose(plain[0], hooked[0], atol=1e-6)
    assert offloaded.module.control_layers[0].attention.to_q._diffusers_hook is not None


def test_controlnet_with_cfg_batch(files, transformer, vae):
    """CFG doubles the batch: the control input is repeated for the negative half."""
    from zimage_pack.samplers.turbo import Guidance

    spec = _spec(load_controlnet(files["2.1 lite"]), vae)
    features, latent = [torch.randn(5, 32), torch.randn(4, 32)], torch.zeros(2, 16, 6, 4)
    guidance = Guidance(cfg=3.0, negative=[torch.randn(3, 32), torch.randn(3, 32)])
    with_cfg = sample(transformer.with_control(spec), features, latent, seed=1, steps=2, guidance=guidance)
    without = sample(transformer, features, latent, seed=1, steps=2, guidance=guidance)
    assert with_cfg.shape == (2, 16, 6, 4) and (with_cfg - without).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["block_offload", "leaf_offload"])
def test_controlnet_lora_and_two_step_under_offloading_equal_the_full_run(files, transformer, vae, tmp_path, mode):
    """Group offloading (onto the CPU here: every hook and move runs) changes nothing: the ControlNet
    path calls the blocks one by one and onloads the transformer's own small parts around them, and a
    LoRA merged or removed between runs re-arms the offloading."""
    from zimage_pack.loaders import demo_loras
    from zimage_pack.loaders.lora_merge import prepare_lora
    from zimage_pack.loaders.residency import apply_offloading, remove_offloading
    from zimage_pack.loaders.step_decoupled import StepSettings, from_models
    from zimage_pack.samplers.two_step import sample_two_step

    cnet = load_controlnet(files["2.1 lite"])
    demo_loras.write_lora(transformer.module, str(tmp_path / "l.safetensors"), "ai-toolkit")
    with_lora = transformer.with_lora(prepare_lora(transformer.module, str(tmp_path / "l.safetensors"), 1.0)[0])
    controlled = with_lora.with_control(_spec(cnet, vae))
    features, latent = [torch.randn(5, 32)], torch.zeros(2, 16, 6, 4)

    def run():
        two = sample_two_step(from_models(controlled, controlled), features * 2, latent, 5, StepSettings())[0]
        plain = sample(transformer, features, latent[:1], seed=0, steps=2)  # the LoRA taken off again
        return two, plain

    want = run()
    apply_offloading(transformer.module, mode, torch.device("cpu"))
    try:
        got = run()
    finally:
        remove_offloading(transformer.module)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
