"""The VAE pass where it can go wrong quietly: the seams of a tiled decode, and a VAE whose output
is not finite (an error naming the VAE file and the fix, never a black or NaN picture).

Tiling. diffusers' tiled decode (what ``decode(..., tile_size)`` uses) decodes overlapping tiles and
blends each tile into the one above and the one to its left over a band of ``tile_size / 4`` pixels;
outside those bands a pixel is one tile's own. A tile sees zero padding where the whole picture has
neighbours, so the tiles disagree most near their borders: the blend bands ("seams") are where the
tiled picture differs from the whole one. The test VAE is the tiny FLUX-shaped one with the residual
branches of its decoder damped (×0.1), so that, like a trained VAE, its picture is determined by the
nearby latent: the undamped random decoder's tiles disagree everywhere (measured mean 0.19, max 1.0 at
tile 64; max 0.74 at tile 128), which leaves nothing to tell a seam from a lost tile.

Measured on seeds 0-7 of the VAE and the latent (320×224 px, tile 128: a tile every 96 px, 32-px
bands): max |tiled − whole| 0.18-0.36, always in the bands (outside them at most 0.15); the largest
step between neighbouring pixels that the whole picture does not have ("jump") 0.18-0.32; the worst
mean error of a 96-px block 0.03-0.06. The test's seed: 0.22, 0.09, 0.20, 0.03. Tiles stitched
without blending: max 0.92-1.0, jump 0.92-1.16. A quarter replaced by grey: max 0.5, block mean
0.43-0.50, yet mean error only 0.09-0.11 (the old bound, mean < 0.1, passed it on 6 of 8 seeds).
"""

import pytest
import torch

from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.vae import decode, encode, load_vae

TILE = 128  # px: diffusers tiles at TILE with a quarter overlap
STRIDE, BAND = TILE * 3 // 4, TILE // 4  # a new tile every 96 px, blended over its first 32 px
LATENT = (1, 16, 40, 28)  # 320×224 px: four tile rows, three tile columns, not square
# tolerances: the worst of the 8 seeds above plus 15-20 %
MAX_ERROR = 0.42  # any pixel; a grey quarter is 0.5 off, a hard cut ≥ 0.92
INNER_ERROR = 0.2  # outside the blend bands
JUMP_ERROR = 0.37  # a step between neighbouring pixels that the whole picture lacks; a hard cut ≥ 0.92
BLOCK_MEAN_ERROR = 0.07  # mean over any whole 96-px block; a lost (grey) tile ≥ 0.43


def locally_determined_vae(seed: int = 2) -> torch.nn.Module:
    model = dm.make_vae(seed=seed)
    with torch.no_grad():
        for name, param in model.decoder.named_parameters():
            if (".resnets." in name and ".conv2." in name) or "attentions.0.to_out" in name:
                param.mul_(0.1)
    return model


def seam_bands(length: int) -> torch.Tensor:
    index = torch.arange(length)
    return (index >= STRIDE) & (index % STRIDE < BAND)


def tiling_errors(tiled: torch.Tensor, whole: torch.Tensor) -> dict[str, float]:
    """Errors of a tiled IMAGE [1, H, W, 3] against the whole decode, per pixel the worst channel."""
    error = (tiled - whole).abs()[0].amax(-1)
    rows, cols = seam_bands(error.shape[0]), seam_bands(error.shape[1])
    seams = rows[:, None] | cols[None, :]
    down = ((tiled[:, 1:] - tiled[:, :-1]) - (whole[:, 1:] - whole[:, :-1])).abs()[0].amax(-1)
    across = ((tiled[:, :, 1:] - tiled[:, :, :-1]) - (whole[:, :, 1:] - whole[:, :, :-1])).abs()[0].amax(-1)
    full = error[: error.shape[0] // STRIDE * STRIDE, : error.shape[1] // STRIDE * STRIDE]  # whole 96-px blocks
    blocks = full.unflatten(0, (-1, STRIDE)).unflatten(2, (-1, STRIDE)).mean((1, 3))
    return dict(max=error.max().item(), seams=error[seams].max().item(), inner=error[~seams].max().item(),
                jump=max(down.max().item(), across.max().item()), block=blocks.max().item())


def assert_tiles_blend(tiled: torch.Tensor, whole: torch.Tensor) -> dict[str, float]:
    errors = tiling_errors(tiled, whole)
    assert errors["max"] <= MAX_ERROR, errors
    assert errors["inner"] <= INNER_ERROR, errors
    assert errors["seams"] > errors["inner"], errors  # the seams are where tiling differs
    assert errors["jump"] <= JUMP_ERROR, errors
    assert errors["block"] <= BLOCK_MEAN_ERROR, errors
    return errors


@pytest.fixture(scope="module")
def tiling(tmp_path_factory):
    path = dm.write_vae(locally_determined_vae(), str(tmp_path_factory.mktemp("vae") / "ae.safetensors"))
    vae = load_vae(path)
    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    calls = []
    original = vae.model.tiled_decode
    vae.model.tiled_decode = lambda *a, **k: calls.append(1) or original(*a, **k)
    tiled = decode(vae, latent, tile_size=TILE)
    assert len(calls) == 1, "tiling was not used"
    del vae.model.tiled_decode
    whole = decode(vae, latent)
    assert tiled.shape == whole.shape == (1, 320, 224, 3)
    return vae, latent, tiled, whole


def test_tiled_decode_differs_from_the_whole_picture_only_at_blended_seams(tiling):
    _, _, tiled, whole = tiling
    assert_tiles_blend(tiled, whole)


def test_the_tiling_check_fails_when_a_quarter_is_grey(tiling):
    _, _, tiled, whole = tiling
    blanked = tiled.clone()
    blanked[:, :160, :112] = 0.5
    with pytest.raises(AssertionError):
        assert_tiles_blend(blanked, whole)


def test_the_tiling_check_fails_when_tiles_are_stitched_without_blending(tiling, monkeypatch):
    from diffusers import AutoencoderKL

    vae, latent, _, whole = tiling
    monkeypatch.setattr(AutoencoderKL, "blend_v", lambda self, above, tile, extent: tile)  # a hard cut
    monkeypatch.setattr(AutoencoderKL, "blend_h", lambda self, left, tile, extent: tile)
    hard = decode(vae, latent, tile_size=TILE)
    with pytest.raises(AssertionError):
        assert_tiles_blend(hard, whole)
    assert tiling_errors(hard, whole)["jump"] > 2 * JUMP_ERROR  # the seam itself gives it away, not just the margin


# ------------------------------------------------------------------------------ non-finite output


def _write(tmp_path, name: str, change) -> str:
    model = dm.make_vae(seed=2)
    with torch.no_grad():
        change(model)
    return dm.write_vae(model, str(tmp_path / name))


LATENT_4 = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))


def test_a_vae_file_with_an_inf_weight_is_refused_naming_the_file(tmp_path):
    path = _write(tmp_path, "ae_corrupt.safetensors", lambda m: m.decoder.mid_block.resnets[0].conv1.weight.view(-1)[0].fill_(float("inf")))
    vae = load_vae(path)
    assert vae.dtype == torch.float32
    raw = vae.model.decode(LATENT_4, return_dict=False)[0]
    assert not torch.isfinite(raw).any()  # without the check: a NaN picture
    with pytest.raises(ZImageInputError) as err:
        decode(vae, LATENT_4)
    message = str(err.value)
    assert "VAE 'ae_corrupt.safetensors' decode" in message and "NaN or inf" in message and "float32" in message
    assert "check the model file" in message and "compute_dtype fp32" not in message  # it computes in fp32 already


def test_a_vae_overflowing_fp16_is_refused_with_the_fix_that_works(tmp_path):
    """The FLUX VAE's activations pass fp16's 65504 (here: conv_in ×1e5); the loader never picks fp16
    for a VAE, but a user can ask for it. The error names the dtype and the fix, and the fix works."""
    path = _write(tmp_path, "ae_loud.safetensors", lambda m: m.decoder.conv_in.weight.mul_(1e5))
    vae = load_vae(path, compute_dtype="fp16")
    assert vae.dtype == torch.float16
    with pytest.raises(ZImageInputError) as err:
        decode(vae, LATENT_4)
    message = str(err.value)
    assert "VAE 'ae_loud.safetensors' decode" in message and "float16" in message and "set the loader's compute_dtype to fp32" in message
    fixed = decode(load_vae(path, compute_dtype="fp32"), LATENT_4)
    assert torch.isfinite(fixed).all()


def test_a_non_finite_encode_is_refused_not_passed_on_as_a_nan_latent(tmp_path):
    path = _write(tmp_path, "ae_bad_encoder.safetensors", lambda m: m.encoder.conv_in.weight.view(-1)[0].fill_(float("nan")))
    with pytest.raises(ZImageInputError, match="VAE 'ae_bad_encoder.safetensors' encode output: found NaN or inf"):
        encode(load_vae(path), torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0)))
