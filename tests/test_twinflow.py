"""TwinFlow-Z-Image-Turbo: loading t_embedder_2 from every layout, and the few-step sampler against
an independent float32 computation of the authors' formulas on the same weights and noise."""

import math

import pytest
import torch
from safetensors.torch import save_file
from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders import demo_quantized as dq
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.quantized import quantized_layers
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.loaders.twinflow import is_twinflow
from zimage_pack.samplers.latents import seeded_noises, to_raw_space
from zimage_pack.samplers.twinflow import sample_twinflow, twinflow_sigmas


@pytest.fixture(scope="module")
def twin():
    return dm.make_twinflow_transformer(seed=11)


@pytest.fixture(scope="module")
def twin_files(twin, tmp_path_factory):
    root = tmp_path_factory.mktemp("twinflow")
    state = dm.diffusers_to_comfy_transformer_keys({k: v.contiguous() for k, v in twin.state_dict().items()})
    plain = str(root / "TwinFlow-Z-Image-Turbo.safetensors")
    save_file(state, plain)
    prefixed = str(root / "twinflow_prefixed.safetensors")  # ComfyUI prefix on the model, extended_weights. on t_embedder_2
    save_file({(f"extended_weights.{k}" if k.startswith("t_embedder_2.") else f"model.diffusion_model.{k}"): v for k, v in state.items()}, prefixed)
    folder = str(root / "TwinFlow-Z-Image-Turbo" / "transformer")
    twin.save_pretrained(folder, safe_serialization=True)
    gguf = dq.write_gguf_transformer(twin, str(root / "TwinFlow-Z-Image-Turbo-Q8_0.gguf"), "Q8_0")
    return {"plain": plain, "prefixed": prefixed, "folder": folder, "gguf": gguf, "root": root, "state": state}


@pytest.mark.parametrize("layout", ["plain", "prefixed", "folder", "gguf"])
def test_twinflow_loads_from_every_layout(twin, twin_files, layout):
    """Every tensor, t_embedder_2's included. The float32 layouts hold the model's own values: bit-identical
    (tolerance 0). The Q8_0 GGUF: each quantised weight within Q8_0's bound, per block of 32 with d = its
    largest |w| / 127, |error| <= (1/2 + 2·127·2^-11)·d (rounding to the nearest multiple of d, the scale
    stored in fp16, the product d·q taken in fp16 as diffusers / ComfyUI-GGUF dequantise); its F32 tensors
    are held in bf16, the compute dtype of a quantised file: exactly the bf16 rounding of the originals."""
    loaded = load_transformer(twin_files[layout])
    assert is_twinflow(loaded.module) and "TwinFlow" in loaded.describe()
    want = twin.state_dict()
    quantised = quantized_layers(loaded.module)
    got = {k: v for k, v in loaded.module.state_dict().items() if k.rpartition(".")[0] not in quantised}
    got.update({f"{name}.weight": layer.dequantized(torch.float32) for name, layer in quantised.items()})
    got.update({f"{name}.bias": layer.bias for name, layer in quantised.items() if layer.bias is not None})
    assert set(got) == set(want)
    if layout != "gguf":
        assert not quantised
        for key, value in want.items():
            assert got[key].dtype == torch.float32 and torch.equal(got[key], value), key
        return
    assert "t_embedder_2.mlp.0" in quantised and "t_embedder_2.mlp.2" in quantised
    for key, value in want.items():
        if key.removesuffix(".weight") in quantised:
            blocks = value.reshape(value.shape[0], -1, 32)
            d = blocks.abs().amax(-1, keepdim=True) / 127
            error = (got[key].reshape(blocks.shape) - blocks).abs()
            assert (error <= (0.5 + 2 * 127 * 2.0 ** -11) * d).all(), key
        else:
            assert got[key].dtype == torch.bfloat16 and torch.equal(got[key], value.bfloat16()), key


@pytest.mark.parametrize("layout", ["plain", "prefixed", "folder", "gguf", "scaled_fp8", "float8_e4m3fn", "float8_e4m3fn_header"])
def test_read_embedder_alone_from_every_layout(twin, twin_files, layout, tmp_path):
    """loaders.twinflow.read_embedder (what the native TwinFlow patch reads): t_embedder_2 under its own names.
    Plain layouts: the float32 values bit for bit. fp8 repacks (t_embedder_2 quantised too): the stored fp8
    times its scale, read from the file here. GGUF Q8_0: within Q8_0's bound (as above)."""
    from safetensors.torch import load_file
    from zimage_pack.loaders.twinflow import read_embedder

    want = {k: v for k, v in twin.state_dict().items() if k.startswith("t_embedder_2.")}
    path = twin_files.get(layout)
    if path is None:
        fmt, header = layout.removesuffix("_header"), layout.endswith("_header")
        state, metadata = dq.quantize_state(twin_files["state"], fmt, lambda layer: layer.startswith("t_embedder_2"), header_metadata=header)
        path = str(tmp_path / f"twinflow_{layout}.safetensors")
        save_file({f"model.diffusion_model.{k}": v for k, v in state.items()}, path, metadata=metadata)
        stored = load_file(path)
        for key in [k for k in want if k.endswith(".weight")]:
            scale = stored.get(f"model.diffusion_model.{key[:-len('weight')]}scale_weight", stored.get(f"model.diffusion_model.{key}_scale"))
            assert stored[f"model.diffusion_model.{key}"].dtype == torch.float8_e4m3fn
            want[key] = stored[f"model.diffusion_model.{key}"].float() * scale.float()
        want.update({k: v.bfloat16() for k, v in want.items() if k.endswith(".bias")})
    got = read_embedder(path)
    assert set(got) == set(want)
    for key, value in want.items():
        if layout == "gguf" and key.endswith(".weight"):
            blocks = value.reshape(value.shape[0], -1, 32)
            d = blocks.abs().amax(-1, keepdim=True) / 127
            assert ((got[key].reshape(blocks.shape) - blocks).abs() <= (0.5 + 2 * 127 * 2.0 ** -11) * d).all(), key
        else:
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def test_read_embedder_of_a_plain_file_is_none(model_files):
    from zimage_pack.loaders.twinflow import read_embedder

    assert read_embedder(model_files["comfy"]) is None


def test_plain_z_image_is_not_twinflow(model_files):
    assert not is_twinflow(load_transformer(model_files["comfy"]).module)


@pytest.mark.parametrize("damage", ["missing_bias", "wrong_shape"])
def test_broken_t_embedder_2_is_refused(twin_files, tmp_path, damage):
    state = dict(twin_files["state"])
    if damage == "missing_bias":
        del state["t_embedder_2.mlp.2.bias"]
    else:
        state["t_embedder_2.mlp.2.weight"] = state["t_embedder_2.mlp.2.weight"][:, :100].contiguous()
    path = str(tmp_path / "broken_twinflow.safetensors")
    save_file(state, path)
    with pytest.raises(ZImageInputError, match="t_embedder_2"):
        load_transformer(path)


def _authors_sigmas(steps, g0, g1, a=1.0, b=1.0, c=1.0):
    """What the authors' UnifiedSampler.sampling_loop computes, line by line as their code orders it,
    in the dtype of their pipeline's noise (bf16): the step count (one more when g1 is 0), the float64
    linspace moved to the noise's dtype, the endpoint dropped when g1 is 0, their time transform
    (1 − (1 − t^a)^b)^c, then 1 − t and a terminal 0, all as bf16 tensor arithmetic."""
    noise = torch.zeros(1, dtype=torch.bfloat16)
    num_steps = steps
    if g1 == 0:
        num_steps += 1
    t = torch.linspace(g0, 1.0 - g1, num_steps, dtype=torch.float64).to(noise)
    if g1 == 0:
        t = t[:-1]
    t = (1 - (1 - t ** a) ** b) ** c
    return torch.cat([1 - t, torch.zeros(1, dtype=t.dtype)]).float().tolist()


@pytest.mark.parametrize("nfe", [1, 2, 3, 4])
@pytest.mark.parametrize("gaps", [None, (0.001, 0.5), (0.001, 0.6), (0.001, 0.7), (0.0, 0.0), (0.05, 0.3)])
def test_sigmas_are_the_authors_grid(nfe, gaps):
    from zimage_pack.samplers.twinflow import DEFAULT_GAPS

    g0, g1 = gaps or DEFAULT_GAPS[nfe]
    assert twinflow_sigmas(nfe, g0, g1).tolist() == _authors_sigmas(nfe, g0, g1)


def test_sigmas_known_values():
    assert twinflow_sigmas(2).tolist() == [1.0, 0.6015625, 0.0]
    assert twinflow_sigmas(4).tolist() == [1.0, 0.83203125, 0.6640625, 0.5, 0.0]  # rounding 1 − t once gave 0.66796875
    with pytest.raises(ZImageInputError, match="nfe"):
        twinflow_sigmas(8)


def _reference_velocity(module, x, sigma, caps):
    """The formulas in float32, independent of the pack's hook: adaLN = t_emb(1000 t) +
    t_emb2(1000 (0 − t)) · |t − 0|, through diffusers' own forward with t_embedder swapped for it."""
    inner, second = module.t_embedder, module.t_embedder_2

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.second = inner, second
            self.mlp = inner.mlp  # diffusers reads t_embedder.mlp[0].weight.dtype

        def forward(self, t_scaled):
            t = t_scaled / 1000.0
            return self.inner(t_scaled) + self.second((0.0 - t) * 1000.0) * (t - 0.0).abs()[:, None]

    module.t_embedder = Reference()
    try:
        t = torch.full((x.shape[0],), 1.0 - sigma)
        out = module(list(x.unsqueeze(2).unbind(0)), t, caps, return_dict=False)[0]
    finally:
        module.t_embedder = inner
    return -torch.stack(out).squeeze(2)


def _reference_sample(module, caps, shape, seed, sigmas, r=1.0):
    noise, *fresh = seeded_noises(shape, seed, len(sigmas))
    x = noise.clone()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        f = _reference_velocity(module, x, sigma, caps)
        x0 = x - sigma * f
        z = x + (1 - sigma) * f
        x = (1 - sigma_next) * x0 + sigma_next * (math.sqrt(1 - r) * z + math.sqrt(r) * fresh[i])
    return to_raw_space(x0)


@pytest.mark.parametrize("nfe,ratio", [(2, 1.0), (4, 1.0), (4, 0.5)])
def test_sample_equals_the_formulas_in_float32(twin_files, nfe, ratio):
    loaded = load_transformer(twin_files["plain"])  # float32 file: float32 compute
    reference = dm.make_twinflow_transformer(seed=0)
    reference.load_state_dict(loaded.module.state_dict())
    caps = [torch.randn(7, 32, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    latent = torch.zeros(2, 16, 8, 6)
    got, first = sample_twinflow(loaded, caps, latent, seed=21, nfe=nfe, stochastic_ratio=ratio)
    from zimage_pack.samplers.twinflow import DEFAULT_GAPS

    want = _reference_sample(reference, caps, latent.shape, 21, _authors_sigmas(nfe, *DEFAULT_GAPS[nfe]), ratio)
    assert (got - want).abs().max() <= 1e-4
    assert first.shape == got.shape and not torch.equal(first, got)


def test_t_embedder_2_is_exercised(twin_files):
    """A perturbed t_embedder_2 changes the velocity where t > 0 (σ 0.6: step 2 of 2 NFE) and the
    sample; at σ = 1 (t = 0, step 1 of 2 NFE) its term is |t − 0| · … = 0, as in the reference."""
    from zimage_pack.loaders.twinflow import target_timestep
    from zimage_pack.samplers.turbo import predict_velocity

    loaded = load_transformer(twin_files["plain"])
    caps = [torch.randn(7, 32)]
    x = torch.randn(1, 16, 8, 6)
    latent = torch.zeros(1, 16, 8, 6)
    with target_timestep(loaded.module, 0.0):
        at_06, at_1 = predict_velocity(loaded, x, 0.6015625, caps, None), predict_velocity(loaded, x, 1.0, caps, None)
    before = sample_twinflow(loaded, caps, latent, seed=5)[0]
    with torch.no_grad():
        loaded.module.t_embedder_2.mlp[2].weight.mul_(3.0)
    with target_timestep(loaded.module, 0.0):
        assert not torch.allclose(predict_velocity(loaded, x, 0.6015625, caps, None), at_06)
        assert torch.equal(predict_velocity(loaded, x, 1.0, caps, None), at_1)
    assert not torch.allclose(sample_twinflow(loaded, caps, latent, seed=5)[0], before)
    assert torch.equal(predict_velocity(loaded, x, 0.6015625, caps, None), predict_velocity(loaded, x, 0.6015625, caps, None))


def test_turbo_sampler_on_a_twinflow_model_ignores_the_second_embedder(twin_files):
    from zimage_pack.samplers.turbo import sample

    loaded = load_transformer(twin_files["plain"])
    caps, latent = [torch.randn(7, 32)], torch.zeros(1, 16, 8, 6)
    a = sample(loaded, caps, latent, seed=2, steps=2)
    with torch.no_grad():
        loaded.module.t_embedder_2.mlp[2].weight.mul_(5.0)
    assert torch.equal(sample(loaded, caps, latent, seed=2, steps=2), a)


def test_twinflow_sampler_refuses_a_plain_model(model_files):
    with pytest.raises(ZImageInputError, match="TwinFlow"):
        sample_twinflow(load_transformer(model_files["comfy"]), [torch.randn(4, 32)], torch.zeros(1, 16, 4, 4), seed=1)


def test_img2img_and_controlnet_on_twinflow(twin_files, tmp_path):
    """denoise < 1 starts from the noised input (the last calls of a longer schedule); a ControlNet's
    hints reach the TwinFlow path (its block-by-block forward runs the same hooked t_embedder)."""
    from zimage_pack.loaders.controlnet import load_controlnet
    from zimage_pack.loaders.vae import load_vae
    from zimage_pack.samplers.control import ControlSpec

    loaded = load_transformer(twin_files["plain"])
    caps = [torch.randn(7, 32)]
    source = torch.randn(1, 16, 8, 6)
    full = sample_twinflow(loaded, caps, source, seed=4, nfe=2)[0]
    partial = sample_twinflow(loaded, caps, source, seed=4, nfe=2, denoise=0.5)[0]
    sigmas = twinflow_sigmas(2, denoise=0.5)
    assert float(sigmas[0]) < 0.99 and len(sigmas) == 3
    assert (partial - source).abs().mean() < (full - source).abs().mean()  # keeps more of the input
    cnet = load_controlnet(dm.write_controlnet(dm.make_controlnet("2.1 lite", seed=3), str(tmp_path / "cn.safetensors")))
    vae = load_vae(dm.write_vae(dm.make_vae(seed=2), str(tmp_path / "ae.safetensors")))
    spec = ControlSpec(cnet, vae, torch.rand(1, 64, 48, 3), 0.9)
    latent = torch.zeros(1, 16, 8, 6)
    with_control = sample_twinflow(loaded.with_control(spec), caps, latent, seed=4)[0]
    assert not torch.allclose(with_control, sample_twinflow(loaded, caps, latent, seed=4)[0])
