"""TwinFlow-Z-Image-Turbo on native MODELs (nodes/native_twinflow.py, nodes/twinflow_nodes.py): UNETLoader's
MODEL of a thin real-width TwinFlow file (t_embedder_2 dropped) + ZImageTwinFlowPatch, sampled by the
all-in-one node and by ComfyUI's custom sampling with the pack's SAMPLER and SIGMAS, against an independent
float32 computation of the authors' formulas: the engine's float32 forward on the same file with its
t_embedder replaced by the formula (not the engine's hook, not the patch), driving the loop written out below
with the authors' σ grid as their code makes it (tests/test_twinflow.py ``_authors_sigmas``).

Error measure: max |ours − reference| / max |reference| over the latent (raw VAE space). The MODEL holds the
file's bf16 weights and computes in float32 on the CPU (asserted below), the reference computes in float32 on
the same values: what is left is float32 summation order, so the issue's
1e-3 relative bar holds with a wide margin (measured ~1e-6). fp8 and GGUF MODELs are compared both with the
reference on the bf16 values (their own quantisation error, reported) and with the reference on the values
the MODEL holds (≤ 1e-3).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.sd
import pytest
import torch
from safetensors import safe_open
from test_twinflow import _authors_sigmas
from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders.demo_loras import write_lora
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.lora_merge import merge_state, prepare_lora, sync_lora_stack
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.nodes.native_lora import add_lora
from zimage_pack.nodes.native_twinflow import (
    add_twinflow,
    is_twinflow,
    read_twinflow_embedder,
    twinflow_sampler,
    twinflow_schedule,
)
from zimage_pack.nodes.twinflow_nodes import (
    ZImageTwinFlowPatch,
    ZImageTwinFlowSampler,
    ZImageTwinFlowSamplerSelect,
    ZImageTwinFlowScheduler,
)
from zimage_pack.samplers.latents import seeded_noises, to_model_space, to_raw_space
from zimage_pack.samplers.twinflow import DEFAULT_GAPS

THIN = sys.modules["conftest"].THIN  # tests/in_comfyui/conftest.py's thin real-width sizes
ROOT = Path(__file__).resolve().parents[2]
NAME = "TwinFlow-Z-Image-Turbo-thin.safetensors"
LATENT = torch.zeros(1, 16, 8, 8)  # 64×64 pixels
SEED = 7
BAR = 1e-3
MEASURED = {}


def _features(seed=1, tokens=6):
    return torch.randn(tokens, 32, generator=torch.Generator().manual_seed(seed))


FEATURES = _features()
POSITIVE = [[FEATURES[None], {}]]


def _relative(ours, reference) -> float:
    return ((ours.float() - reference).abs().max() / reference.abs().max()).item()


def _record(case, ours, reference):
    error = _relative(ours, reference)
    MEASURED[case] = (((ours.float() - reference).abs().max()).item(), error)
    print(f"\n{case}: max abs {MEASURED[case][0]:.3g}, relative {error:.3g}")
    return error


# test files are made in a child process: the gigabytes they pass through go back to the system when it exits
_CHILD = """
import importlib.util, json, sys
root, job, path, arg = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("zimage_pack", root + "/__init__.py", submodule_search_locations=[root])
sys.modules["zimage_pack"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import torch
from safetensors.torch import load_file
from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders import demo_quantized as dq
if job == "twinflow":
    dm.write_transformer(dm.make_twinflow_transformer(seed=5, **json.loads(arg)).to(torch.bfloat16), path, "comfy")
else:  # a Q8_0 GGUF of that file, t_embedder_2 quantised too
    dq.write_gguf(load_file(arg), path, "lumina2", "Q8_0", lambda name: name.endswith(".weight"))
"""


def _make_in_child(job: str, path: str, arg: str) -> str:
    subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), job, path, arg], check=True)
    return path


@pytest.fixture(scope="module")
def twin_file(comfy_folders):
    """A thin real-width TwinFlow-Z-Image-Turbo in bf16, ComfyUI's single-file layout plus t_embedder_2."""
    return _make_in_child("twinflow", str(comfy_folders / "models" / "diffusion_models" / NAME), json.dumps(THIN))


@pytest.fixture(scope="module")
def plain(twin_file):
    """UNETLoader's MODEL of the TwinFlow file (ComfyUI drops t_embedder_2), its weights in the file's bf16 as
    UNETLoader keeps them on a GPU (on the CPU it would widen them to float32: twice the memory of this machine)."""
    model = comfy.sd.load_diffusion_model(twin_file, model_options={"dtype": torch.bfloat16})
    assert model is not None and "t_embedder_2" not in str(list(model.model.state_dict()))
    print("\nUNETLoader's MODEL: weights", model.model.get_dtype(), "compute", model.model.get_dtype_inference())
    assert model.model.get_dtype() == torch.bfloat16 and model.model.get_dtype_inference() == torch.float32
    return model


@pytest.fixture(scope="module")
def patched(plain):
    return ZImageTwinFlowPatch.execute(plain, NAME).result[0]


@pytest.fixture(scope="module")
def engine(twin_file):
    """The engine on the same file, weights held and computed in float32."""
    return load_transformer(twin_file, weight_dtype=torch.float32, compute_dtype="fp32")


class _Formula(torch.nn.Module):
    """adaLN input = t_emb(1000 t) + t_emb2(1000 (0 − t)) · |t − 0| in float32 (target 0), for diffusers' forward."""

    def __init__(self, inner, second):
        super().__init__()
        self.inner, self.second, self.mlp = inner, second, inner.mlp

    def forward(self, t_scaled):
        t = t_scaled.float() / 1000.0
        return self.inner(t_scaled) + self.second((0.0 - t) * 1000.0) * (t - 0.0).abs()[:, None]


@torch.no_grad()
def _velocity(module, x, sigma):
    inner = module.t_embedder
    module.t_embedder = _Formula(inner, module.t_embedder_2)
    try:
        t = torch.full((x.shape[0],), 1.0 - sigma)
        out = module(list(x.unsqueeze(2).unbind(0)), t, [FEATURES] * x.shape[0], return_dict=False)[0]
    finally:
        module.t_embedder = inner
    return -torch.stack(out).squeeze(2)


def _sigmas(nfe, denoise=1.0):
    total = nfe if denoise >= 1 else int(nfe / denoise)
    return _authors_sigmas(total, *DEFAULT_GAPS[min(total, 4)])[-(nfe + 1):]


def _reference(module, nfe, ratio, seed=SEED, latent=LATENT, denoise=1.0):
    """(final, step-1 x0) in raw VAE space: the authors' loop, F = −(model output), target 0."""
    sigmas = _sigmas(nfe, denoise)
    noise, *fresh = seeded_noises(latent.shape, seed, len(sigmas))
    x = sigmas[0] * noise + (1 - sigmas[0]) * (to_model_space(latent) if latent.count_nonzero() else latent)
    first = None
    for i in range(nfe):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        f = _velocity(module, x, sigma)
        x0 = x - sigma * f
        z = x + (1 - sigma) * f
        first = x0 if first is None else first
        x = (1 - sigma_next) * x0 + sigma_next * (math.sqrt(1 - ratio) * z + math.sqrt(ratio) * fresh[i])
    return to_raw_space(x0), to_raw_space(first)


_REFERENCES = {}


def _cached_reference(engine, nfe, ratio):
    if (nfe, ratio) not in _REFERENCES:
        _REFERENCES[nfe, ratio] = _reference(engine.module, nfe, ratio)
    return _REFERENCES[nfe, ratio]


@pytest.mark.parametrize("nfe, ratio", [(2, 1.0), (2, 0.5), (4, 1.0), (4, 0.5)])
def test_sampler_node_equals_the_authors_formulas(patched, engine, nfe, ratio):
    final, step1 = ZImageTwinFlowSampler.execute(patched, POSITIVE, {"samples": LATENT.clone()}, SEED, nfe, 0.001, -1.0, ratio, 1.0).result
    want, want_first = _cached_reference(engine, nfe, ratio)
    assert _record(f"node {nfe} NFE r={ratio}", final["samples"], want) <= BAR
    assert _record(f"node {nfe} NFE r={ratio} step 1", step1["samples"], want_first) <= BAR


def test_img2img_equals_the_authors_formulas(patched, engine):
    """denoise 0.5 at 2 NFE: the last 2 calls of the 4-call grid from the noised input, as KSampler does."""
    start = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    final, _ = ZImageTwinFlowSampler.execute(patched, POSITIVE, {"samples": start.clone()}, SEED, 2, 0.001, -1.0, 1.0, 0.5).result
    want, _ = _reference(engine.module, 2, 1.0, latent=start, denoise=0.5)
    assert _record("node 2 NFE denoise 0.5", final["samples"], want) <= BAR


def test_sampler_custom_advanced_with_the_packs_sampler_and_sigmas(patched, engine):
    """SamplerCustomAdvanced's own code (RandomNoise, BasicGuider) with the SAMPLER and SIGMAS nodes' outputs."""
    from comfy_extras.nodes_custom_sampler import (
        BasicGuider,
        RandomNoise,
        SamplerCustomAdvanced,
    )

    sampler = ZImageTwinFlowSamplerSelect.execute(0.5).result[0]
    assert ZImageTwinFlowScheduler.execute(patched, 4, 0.001, -1.0, 1.0).result[0].tolist() == _sigmas(4)
    sigmas = ZImageTwinFlowScheduler.execute(patched, 2, 0.001, -1.0, 1.0).result[0]
    assert sigmas.tolist() == _sigmas(2)
    noise = RandomNoise.execute(SEED).result[0]
    guider = BasicGuider.execute(patched, POSITIVE).result[0]
    out = SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, {"samples": LATENT.clone()}).result[0]
    assert _record("SamplerCustomAdvanced 2 NFE r=0.5", out["samples"], _cached_reference(engine, 2, 0.5)[0]) <= BAR


def test_sample_custom_with_the_packs_sampler_and_sigmas(patched, engine):
    """comfy.sample.sample_custom (SamplerCustom's call) with twinflow_sampler and twinflow_schedule."""
    out = comfy.sample.sample_custom(patched, comfy.sample.prepare_noise(LATENT, SEED), 1.0, twinflow_sampler(1.0), twinflow_schedule(patched, 2),
                                     POSITIVE, [], LATENT.clone(), disable_pbar=True, seed=SEED)
    assert _record("sample_custom 2 NFE r=1", out, _cached_reference(engine, 2, 1.0)[0]) <= BAR


def test_with_a_lora_equals_the_engine_with_the_lora_merged(patched, engine, tmp_path):
    """The pack's LoRA patches on the TwinFlow MODEL against the engine with the LoRA merged. ComfyUI stores a
    patched weight in the MODEL's dtype (bf16: the float32 sum rounded once); the reference's merged weights are
    rounded to bf16 likewise (against the unrounded float32 merge the result is 1.9e-3 off: bf16's rounding of
    the merged weights, not TwinFlow's; measured once, not repeated here)."""
    path = str(tmp_path / "twinflow_lora.safetensors")
    write_lora(engine.module, path, "ai-toolkit", rank=4, seed=3)
    with_lora, report = add_lora(patched, path, 0.8)
    assert not report.not_applied and is_twinflow(with_lora)
    final, _ = ZImageTwinFlowSampler.execute(with_lora, POSITIVE, {"samples": LATENT.clone()}, SEED, 2, 0.001, -1.0, 1.0, 1.0).result
    patch, _ = prepare_lora(engine.module, path, 0.8)
    sync_lora_stack(engine.module, (patch,))
    try:
        merged = merge_state(engine.module).originals
        assert len(merged) == 8
        params = dict(engine.module.named_parameters())
        with torch.no_grad():
            for name in merged:
                params[name].copy_(params[name].bfloat16().float())
        want, _ = _reference(engine.module, 2, 1.0)
    finally:
        sync_lora_stack(engine.module, ())
    assert _relative(want, _cached_reference(engine, 2, 1.0)[0]) > 10 * BAR  # the LoRA changes the picture
    assert _record("LoRA 2 NFE r=1", final["samples"], want) <= BAR
    del with_lora
    comfy.model_management.unload_all_models()  # gives back ComfyUI's copies of the weights it patched


def test_a_model_without_the_embedder_is_refused(plain, twin_file, tmp_path, comfy_folders):
    assert not is_twinflow(plain)
    for call in (lambda: ZImageTwinFlowSampler.execute(plain, POSITIVE, {"samples": LATENT.clone()}, SEED, 2, 0.001, -1.0, 1.0, 1.0),
                 lambda: ZImageTwinFlowScheduler.execute(plain, 2, 0.001, -1.0, 1.0),
                 lambda: comfy.sample.sample_custom(plain, comfy.sample.prepare_noise(LATENT, SEED), 1.0, twinflow_sampler(), torch.tensor([1.0, 0.6, 0.0]),
                                                    POSITIVE, [], LATENT.clone(), disable_pbar=True, seed=SEED)):
        with pytest.raises(ZImageInputError, match="model") as err:
            call()
        assert "TwinFlow" in str(err.value)
    # a plain Z-Image file offered as the TwinFlow file: refused by name, nothing patched
    plain_file = dm.write_transformer(dm.make_transformer(seed=2), str(comfy_folders / "models" / "diffusion_models" / "z_image_tiny_plain.safetensors"))
    with pytest.raises(ZImageInputError, match="z_image_tiny_plain.safetensors"):
        ZImageTwinFlowPatch.execute(plain, "z_image_tiny_plain.safetensors")
    assert plain_file and not plain.object_patches


def test_patch_shares_the_base_weights_and_leaves_the_input_unchanged(plain, patched, twin_file):
    embedder = patched.get_model_object("diffusion_model.t_embedder")
    original = plain.get_model_object("diffusion_model.t_embedder")
    assert patched.model is plain.model and embedder.first is original and embedder.mlp is original.mlp
    assert not plain.object_patches and not plain.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL)
    assert not is_twinflow(plain) and is_twinflow(patched)
    base = {id(p) for p in plain.model.parameters()}
    new = [name for name, p in embedder.named_parameters() if id(p) not in base]
    assert sorted(new) == ["t_embedder_2.mlp.0.bias", "t_embedder_2.mlp.0.weight", "t_embedder_2.mlp.2.bias", "t_embedder_2.mlp.2.weight"]
    file_embedder = read_twinflow_embedder(twin_file)
    for name, value in embedder.t_embedder_2.state_dict().items():
        assert torch.equal(value, file_embedder["t_embedder_2." + name])
    # patching twice replaces the embedder (one wrapper, the same original underneath)
    again = add_twinflow(patched, file_embedder)
    assert again.get_model_object("diffusion_model.t_embedder").first is original
    assert len(again.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "zimage_twinflow")) == 1


def test_plain_sampling_on_the_patched_model_is_stock_z_image(plain, patched):
    """Without a target time the patched MODEL is the stock model bit for bit (euler, σ 0.6 → 0); with the target
    (TwinFlow's sampler on the same σ: the same x0 step) its t_embedder_2 term changes the result."""
    sigmas = torch.tensor([0.6, 0.0])
    noise = comfy.sample.prepare_noise(LATENT, SEED)

    def run(model, sampler):
        return comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, POSITIVE, [], LATENT.clone(), disable_pbar=True, seed=SEED)

    stock = run(plain, comfy.samplers.sampler_object("euler"))
    assert torch.equal(run(patched, comfy.samplers.sampler_object("euler")), stock)
    assert _relative(run(patched, twinflow_sampler(0.0)), stock) > 10 * BAR


def _comfy_name(name: str) -> tuple[str, slice | None]:
    """A diffusers name of the engine → (ComfyUI name, rows of the fused qkv)."""
    for index, part in enumerate(("to_q", "to_k", "to_v")):
        if f".attention.{part}." in name:
            return name.replace(f".attention.{part}.", ".attention.qkv."), slice(index * THIN["dim"], (index + 1) * THIN["dim"])
    for old, new in ((".attention.to_out.0.", ".attention.out."), (".attention.norm_q.", ".attention.q_norm."), (".attention.norm_k.", ".attention.k_norm."),
                     ("all_x_embedder.2-1.", "x_embedder."), ("all_final_layer.2-1.", "final_layer.")):
        name = name.replace(old, new)
    return name, None


def _reference_on_the_models_weights(engine, native, twin_file, nfe, ratio):
    """The reference with the engine's weights set to the values the native MODEL holds (its fp8 or GGUF
    storage, as ComfyUI dequantises it), the rest of the computation unchanged; the engine's weights read
    back from the file after (no second copy held)."""
    stored = native.model.diffusion_model.state_dict()
    params = dict(engine.module.named_parameters())
    swapped = []
    try:
        with torch.no_grad():
            for name, param in params.items():
                if name.startswith("t_embedder_2."):
                    continue
                comfy_name, rows = _comfy_name(name)
                value = stored[comfy_name]
                if type(value).__name__ == "QuantizedTensor":  # GGUF blocks, dequantised as the ops do it (to float32)
                    value = value.to(torch.float32).dequantize()
                value = (value[rows] if rows is not None else value).float().reshape(param.shape)
                if not torch.equal(value, param):
                    swapped.append(name)
                    param.copy_(value)
        return _reference(engine.module, nfe, ratio)[0], len(swapped)
    finally:
        with safe_open(twin_file, "pt") as handle, torch.no_grad():
            for name in swapped:
                comfy_name, rows = _comfy_name(name)
                value = handle.get_slice(comfy_name)[rows] if rows is not None else handle.get_tensor(comfy_name)
                params[name].copy_(value.float().reshape(params[name].shape))


def test_fp8_model(twin_file, engine):
    """UNETLoader with weight_dtype fp8_e4m3fn: against the reference on the weights the fp8 MODEL holds (the
    only difference left is float32 order: ≤ 1e-3) and, for scale, against the bf16 reference (fp8's own error)."""
    comfy.model_management.unload_all_models()
    fp8 = comfy.sd.load_diffusion_model(twin_file, model_options={"dtype": torch.float8_e4m3fn})
    assert fp8.model.diffusion_model.layers[0].feed_forward.w1.weight.dtype == torch.float8_e4m3fn
    patched = ZImageTwinFlowPatch.execute(fp8, NAME).result[0]
    final, _ = ZImageTwinFlowSampler.execute(patched, POSITIVE, {"samples": LATENT.clone()}, SEED, 2, 0.001, -1.0, 1.0, 1.0).result
    _record("fp8 2 NFE r=1 vs bf16 reference (fp8 error)", final["samples"], _cached_reference(engine, 2, 1.0)[0])
    want, swapped = _reference_on_the_models_weights(engine, fp8, twin_file, 2, 1.0)
    assert swapped > 0
    assert _record("fp8 2 NFE r=1 vs reference on fp8 weights", final["samples"], want) <= BAR
    del patched, fp8
    comfy.model_management.unload_all_models()


def test_gguf_model(twin_file, engine, comfy_folders):
    """A Q8_0 GGUF of the same TwinFlow model (t_embedder_2 quantised too) through nodes/native_gguf.py and the
    patch reading t_embedder_2 from the GGUF: against the reference on the dequantised weights the MODEL holds."""
    from zimage_pack.nodes.native_gguf import load_gguf_transformer

    comfy.model_management.unload_all_models()
    name = "TwinFlow-Z-Image-Turbo-thin-Q8_0.gguf"
    path = _make_in_child("gguf", str(comfy_folders / "models" / "diffusion_models" / name), twin_file)
    model = load_gguf_transformer(path)
    patched = ZImageTwinFlowPatch.execute(model, name).result[0]
    final, _ = ZImageTwinFlowSampler.execute(patched, POSITIVE, {"samples": LATENT.clone()}, SEED, 2, 0.001, -1.0, 1.0, 1.0).result
    _record("GGUF Q8_0 2 NFE r=1 vs bf16 reference (Q8_0 error)", final["samples"], _cached_reference(engine, 2, 1.0)[0])
    # the reference's t_embedder_2 also dequantised from the GGUF, as the patch holds it
    embedder = read_twinflow_embedder(path)
    second = dict(engine.module.t_embedder_2.named_parameters())
    kept = {k: v.detach().clone() for k, v in second.items()}
    try:
        with torch.no_grad():
            for key, value in embedder.items():
                second[key[len("t_embedder_2."):]].copy_(value.float())
        want, swapped = _reference_on_the_models_weights(engine, model, twin_file, 2, 1.0)
    finally:
        with torch.no_grad():
            for key, value in kept.items():
                second[key].copy_(value)
    assert swapped > 0
    assert _record("GGUF Q8_0 2 NFE r=1 vs reference on the dequantised weights", final["samples"], want) <= BAR
    del patched, model
    comfy.model_management.unload_all_models()
