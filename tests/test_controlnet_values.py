"""Fun ControlNet outputs checked against values computed independently in the test, where
tests/test_controlnet.py only checks that they are finite or that they differ:

- an fp8 ControlNet (weight_dtype fp8_e4m3fn) equals its twin: the same file with every Linear's
  weight and bias rounded to fp8 by the test (``tensor.to(float8_e4m3fn)``, once, from the file's
  float32), run by diffusers' own ZImageControlNetModel;
- under CFG the negative half of the batch gets the control input too (the reference, diffusers'
  ZImageControlNetPipeline and VideoX-Fun, runs the ControlNet on the doubled batch): the guided
  velocity equals v_neg + cfg·(v_pos − v_neg) with both halves controlled.
"""

import copy

import pytest
import torch
from diffusers import ZImageControlNetModel
from diffusers.loaders.single_file_utils import convert_z_image_controlnet_checkpoint_to_diffusers
from safetensors.torch import save_file

import published_controlnets as published
from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders.compute_dtype import match_controlnet
from zimage_pack.loaders.controlnet import load_controlnet
from zimage_pack.loaders.transformer import load_transformer
from zimage_pack.loaders.vae import load_vae
from zimage_pack.samplers.control import ControlSpec, forward_with_control
from zimage_pack.samplers.turbo import Guidance, predict_velocity

LITE = "Z-Image-Turbo-Fun-Controlnet-Union-2.1-lite-2601-8steps.safetensors"  # 3 control layers at [0, 10, 20], refiner hints
# the published 2.1 lite layout (VideoX-Fun's yaml), written here rather than taken from the pack's detection
LITE_CONFIG = dict(control_layers_places=published.PLACES[3], control_refiner_layers_places=[0, 1], control_in_dim=33,
                   add_control_noise_refiner="control_noise_refiner", dim=64, n_heads=2, n_kv_heads=2)


def _is_norm(key: str) -> bool:
    return key.endswith(("norm1.weight", "norm2.weight")) or ".norm_" in key


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_vae):
    root = tmp_path_factory.mktemp("controlnet_values")
    raw = published.published_state(LITE, seed=3)
    path = str(root / LITE)
    save_file({k: v.float().contiguous() for k, v in raw.items()}, path)  # float32: fp8 must be one rounding from it
    transformer = load_transformer(dm.write_transformer(dm.make_transformer(seed=4, n_layers=21, n_refiner_layers=2), str(root / "z_21_layers.safetensors")))
    vae = load_vae(dm.write_vae(tiny_vae, str(root / "ae.safetensors")))
    return dict(root=root, raw=raw, path=path, transformer=transformer, vae=vae)


def _inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(16, 1, 6, 4, generator=g) for _ in range(batch)]
    caps = [torch.randn(5 + 2 * i, 32, generator=g) for i in range(batch)]
    control = torch.randn(batch, 33, 6, 4, generator=g)
    return x, torch.full((batch,), 0.3), caps, control


def _diffusers_twin(raw: dict, transformer, fp8: bool) -> ZImageControlNetModel:
    """diffusers' ControlNet on the file's tensors; ``fp8``: every Linear's weight and bias rounded to fp8
    and back, and the rest (the RMSNorm scales) held in bf16, the compute dtype fp8 storage implies."""
    state = convert_z_image_controlnet_checkpoint_to_diffusers(dict(raw), dict(LITE_CONFIG))
    model = ZImageControlNetModel(**LITE_CONFIG)
    linears = {name for name, sub in model.named_modules() if isinstance(sub, torch.nn.Linear)}
    if fp8:
        state = {k: (v.to(torch.float8_e4m3fn) if k.rpartition(".")[0] in linears else v.to(torch.bfloat16)).float() for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.gradient_checkpointing = False
    return ZImageControlNetModel.from_transformer(model.eval(), transformer.module)


def test_fp8_controlnet_equals_its_fp8_rounded_twin(world):
    """Computing in float32, the fp8 ControlNet's hints are its twin's (same float32 arithmetic on the
    same values: 1e-5 of the hints' scale), while the unrounded ControlNet is ~4 % away (so the test
    sees the rounding). As shipped (bf16 compute beside a bf16 transformer) its velocity is that of a
    bf16 file holding the fp8-rounded values (fp8 values are exact in bf16: same ops, same values;
    tolerance one bf16 ulp of the output's scale, the fp8 rounding moves it by ~100 ulps)."""
    transformer, raw = world["transformer"], world["raw"]
    x, t, caps, control = _inputs()
    cnet = load_controlnet(world["path"], "fp8_e4m3fn")
    assert cnet.module.control_layers[0].attention.to_q.weight.dtype == torch.float8_e4m3fn
    # as shipped: bf16 compute
    bf16_model = copy.deepcopy(transformer.module).to(torch.bfloat16)
    x16, caps16, control16 = [v.bfloat16() for v in x], [c.bfloat16() for c in caps], control.bfloat16()
    got = forward_with_control(bf16_model, x16, t, caps16, [(cnet, control16, 0.9)])
    twin_file = str(world["root"] / "twin_bf16.safetensors")
    save_file({k: (v.float().to(torch.float8_e4m3fn) if not _is_norm(k) else v).to(torch.bfloat16).contiguous() for k, v in raw.items()}, twin_file)
    want = forward_with_control(bf16_model, x16, t, caps16, [(load_controlnet(twin_file), control16, 0.9)])
    unrounded = forward_with_control(bf16_model, x16, t, caps16, [(load_controlnet(world["path"], "bf16"), control16, 0.9)])
    scale = max(w.float().abs().max().item() for w in want)
    ulp = 2.0 ** -8 * scale
    assert max((a.float() - b.float()).abs().max().item() for a, b in zip(got, want)) <= ulp
    assert max((a.float() - b.float()).abs().max().item() for a, b in zip(unrounded, want)) > 10 * ulp
    # float32 compute: the hints against diffusers' own ControlNet holding the rounded weights
    match_controlnet(cnet, torch.float32)
    record = {}
    forward_with_control(transformer.module, x, t, caps, [(cnet, control, 0.9)], record)
    control_list = list(control.unsqueeze(2).unbind(0))
    twin = _diffusers_twin(raw, transformer, fp8=True)(x, t, caps, control_list, conditioning_scale=0.9)
    plain = _diffusers_twin(raw, transformer, fp8=False)(x, t, caps, control_list, conditioning_scale=0.9)
    assert set(record["main"]) == set(twin) == {0, 10, 20}
    scale = max(h.abs().max().item() for h in twin.values())
    assert max((record["main"][k] - twin[k]).abs().max().item() for k in twin) <= 1e-5 * scale
    assert max((plain[k] - twin[k]).abs().max().item() for k in twin) > 100 * 1e-5 * scale


def _spec(world, strength=0.8):
    image = torch.rand(2, 48, 32, 3, generator=torch.Generator().manual_seed(1))
    return ControlSpec(controlnet=load_controlnet(world["path"]), vae=world["vae"], image=image, strength=strength)


def test_cfg_gives_the_negative_half_the_control_too(world):
    """The pack's guided velocity (one doubled batch) against the reference's formula on separate runs:
    v = v_neg + cfg·(v_pos − v_neg), v_pos and v_neg each computed with the ControlNet (1e-5 of the
    scale: float32, the batch padded differently). Guidance without control on the negative half is
    far from it (the check would fail if the pack did that)."""
    transformer = world["transformer"]
    controlled = transformer.with_control(_spec(world))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 6, 4, generator=g)
    positive = [torch.randn(5, 32, generator=g), torch.randn(4, 32, generator=g)]
    negative = [torch.randn(3, 32, generator=g), torch.randn(6, 32, generator=g)]
    cfg, sigma = 3.0, 0.8
    got = predict_velocity(controlled, x, sigma, positive, Guidance(cfg=cfg, negative=negative))
    v_pos = predict_velocity(controlled, x, sigma, positive, None)
    v_neg = predict_velocity(controlled, x, sigma, negative, None)
    want = v_neg + cfg * (v_pos - v_neg)
    tolerance = 1e-5 * want.abs().max().item()
    assert (got - want).abs().max().item() <= tolerance
    v_neg_uncontrolled = predict_velocity(transformer, x, sigma, negative, None)
    negative_without_control = v_neg_uncontrolled + cfg * (v_pos - v_neg_uncontrolled)
    assert (negative_without_control - want).abs().max().item() > 1000 * tolerance
