"""Tests that run inside ComfyUI's own Python, with ComfyUI imported in process (``--cpu``): the pack's
ComfyUI side on ComfyUI's real model code, loaders, patchers and samplers. scripts/test.sh runs them
with ZIMAGE_COMFYUI_PYTHON when a ComfyUI is found (tests/comfyui_harness.py)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

from comfyui_harness import find_comfyui  # noqa: E402

COMFYUI = find_comfyui()
if COMFYUI is None:
    raise pytest.UsageError("tests/in_comfyui needs a ComfyUI (COMFYUI_DIR, the one the pack is installed in, or ../shared/comfyui)")
_runtime = runpy.run_path(str(ROOT / "workflows" / "comfy_runtime.py"))  # by path: the pack's folder names (nodes/) must not shadow ComfyUI's
_runtime["import_comfyui"](str(COMFYUI))  # with --cpu, before anything imports comfy; the pack as zimage_pack


@pytest.fixture(scope="session")
def comfy_folders(tmp_path_factory):
    """ComfyUI's model, input and output folders in a temporary folder."""
    import folder_paths

    root = tmp_path_factory.mktemp("comfyui_folders")
    for name in ("diffusion_models", "text_encoders", "vae", "loras", "model_patches"):
        (root / "models" / name).mkdir(parents=True)
        folder_paths.add_model_folder_path(name, str(root / "models" / name), is_default=True)
    for name in ("input", "output"):
        (root / name).mkdir()
    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.set_output_directory(str(root / "output"))
    return root


# ComfyUI recognises a Z-Image only at its real width (dim 3840, 30 heads of 128; its NextDiT's FFN and
# timestep sizes differ from diffusers' at other widths): a thin real-width model, one main layer and the two
# refiners of each kind, in bf16 (1.8 GB), made once per run.
THIN = dict(dim=3840, n_layers=1, n_refiner_layers=2, n_heads=30, n_kv_heads=30, cap_feat_dim=32, axes_dims=[32, 48, 48])


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    import torch

    from zimage_pack.loaders import demo_models as dm

    model = dm.make_transformer(seed=0, **THIN).to(torch.bfloat16)
    return dm.write_transformer(model, str(tmp_path_factory.mktemp("native") / "z_image_thin_bf16.safetensors"), "comfy")


@pytest.fixture(scope="session")
def native(model_file):
    """ComfyUI's own model for the file, as UNETLoader makes it."""
    import comfy.sd

    model = comfy.sd.load_diffusion_model(model_file)
    assert model is not None, "ComfyUI did not recognise the thin Z-Image"
    return model


@pytest.fixture(scope="session")
def engine(model_file):
    """The pack's diffusers engine on the same file, computing in float32 (the reference side)."""
    from zimage_pack.loaders.transformer import load_transformer

    return load_transformer(model_file, compute_dtype="fp32")
