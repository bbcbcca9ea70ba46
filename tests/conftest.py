"""Shared fixtures: tiny Z-Image models generated from a seed, written in every supported layout."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# ../shared only adds optional suites (the real Qwen tokenizer files; a real ComfyUI): a user's clone has none.
SHARED_DIR = Path(os.environ.get("ZIMAGE_SHARED_DIR") or ROOT.parent / "shared")
REAL_TOKENIZER_DIR = SHARED_DIR / "fixtures" / "qwen_tokenizer"


def _import_pack():
    """The repository root as the package ``zimage_pack`` (as `pip install -e .` names it)."""
    try:
        import zimage_pack
    except ImportError:
        spec = importlib.util.spec_from_file_location("zimage_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        zimage_pack = importlib.util.module_from_spec(spec)
        sys.modules["zimage_pack"] = zimage_pack
        spec.loader.exec_module(zimage_pack)
    if Path(zimage_pack.__file__).resolve().parent != ROOT:
        raise RuntimeError(f"zimage_pack is imported from {zimage_pack.__file__}, not this checkout {ROOT}: reinstall with pip install -e .")
    return zimage_pack


_import_pack()
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/comfyui_harness.py
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

from zimage_pack.loaders import demo_models as dm  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "shared: needs ../shared (the real Qwen tokenizer files); deselected, with one line saying so, where it is absent")
    config.addinivalue_line("markers", "comfyui: runs in a real ComfyUI (tests/comfyui_harness.py); deselected, with one line saying so, where none is found")


def _shared_present() -> bool:
    return (REAL_TOKENIZER_DIR / "vocab.json").is_file() and (REAL_TOKENIZER_DIR / "merges.txt").is_file()


def _comfyui_missing() -> str | None:
    from comfyui_harness import comfyui_python, find_comfyui

    if find_comfyui() is None:
        return ("no ComfyUI found (COMFYUI_DIR, the ComfyUI this pack is installed in, or ../shared/comfyui). "
                "To run them, set COMFYUI_DIR to a ComfyUI checkout and run scripts/test.sh")
    if comfyui_python() is None:
        return "ZIMAGE_COMFYUI_PYTHON is not set. scripts/test.sh sets it up (scripts/setup_comfyui_env.sh); run the suite through it"
    return None


# marker → (why its tests cannot run here or None, the variable that makes a missing suite an error)
def _optional_suites() -> dict:
    return {"shared": (None if _shared_present() else f"no {REAL_TOKENIZER_DIR}. To run them, put the project's shared/ folder beside the "
                       "clone or set ZIMAGE_SHARED_DIR", "ZIMAGE_REQUIRE_SHARED"),
            "comfyui": (_comfyui_missing(), "ZIMAGE_REQUIRE_COMFYUI")}


def pytest_collection_modifyitems(config, items):
    notes = []
    for marker, (missing, required_by) in _optional_suites().items():
        chosen = [item for item in items if item.get_closest_marker(marker)]
        if not chosen or missing is None:
            continue
        if os.environ.get(required_by) == "1":  # CI: the optional suite must run there
            raise pytest.UsageError(f"{required_by}=1 but the {marker} suite cannot run: {missing}")
        items[:] = [item for item in items if item not in chosen]
        config.hook.pytest_deselected(items=chosen)
        notes.append(f"{len(chosen)} tests of the optional {marker} suite did not run: {missing}")
    config._zimage_not_run = notes


def pytest_terminal_summary(terminalreporter, config):
    for note in getattr(config, "_zimage_not_run", []):
        terminalreporter.write_line(note)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    """A small Qwen2-format BPE made from a seed, with Qwen's special tokens and pad id."""
    from zimage_pack.loaders.demo_tokenizer import write_test_tokenizer

    return write_test_tokenizer(str(tmp_path_factory.mktemp("tokenizer")), seed=0)


@pytest.fixture(scope="session")
def real_tokenizer_dir() -> str:
    """The real Qwen tokenizer files, for tests marked ``shared`` only."""
    return str(REAL_TOKENIZER_DIR)


@pytest.fixture(scope="session")
def tiny_transformer():
    return dm.make_transformer(seed=0)


@pytest.fixture(scope="session")
def tiny_text_encoder():
    return dm.make_text_encoder(seed=1)


@pytest.fixture(scope="session")
def tiny_vae():
    return dm.make_vae(seed=2)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory, tiny_transformer, tiny_text_encoder, tiny_vae, tokenizer_dir) -> dict[str, str]:
    """Every layout of the three tiny models, plus a ComfyUI-style models folder tree."""
    root = tmp_path_factory.mktemp("models")
    files = {
        "comfy": dm.write_transformer(tiny_transformer, str(root / "diffusion_models" / "z_image_tiny.safetensors"), "comfy"),
        "comfy_prefixed": dm.write_transformer(tiny_transformer, str(root / "diffusion_models" / "z_image_tiny_prefixed.safetensors"), "comfy", prefix="model.diffusion_model."),
        "comfy_short_prefix": dm.write_transformer(tiny_transformer, str(root / "other" / "z_image_dm_prefix.safetensors"), "comfy", prefix="diffusion_model."),
        "diffusers_single": dm.write_transformer(tiny_transformer, str(root / "other" / "z_image_diffusers_keys.safetensors"), "diffusers"),
        "diffusers_folder": dm.write_transformer(tiny_transformer, str(root / "diffusers" / "z_image_tiny" / "transformer"), "folder"),
        "fp8": dm.write_transformer(tiny_transformer, str(root / "other" / "z_image_fp8.safetensors"), "comfy", dtype=torch.float8_e4m3fn),
        "fp8_scaled": dm.write_transformer(tiny_transformer, str(root / "other" / "z_image_fp8_scaled.safetensors"), "comfy", dtype=torch.float8_e4m3fn, fp8_scaled=True),
        "bf16": dm.write_transformer(tiny_transformer, str(root / "other" / "z_image_bf16.safetensors"), "comfy", dtype=torch.bfloat16),
        "te_comfy": dm.write_text_encoder(tiny_text_encoder, str(root / "text_encoders" / "qwen_3_tiny.safetensors")),
        "te_folder": dm.write_text_encoder(tiny_text_encoder, str(root / "diffusers" / "z_image_tiny" / "text_encoder"), "folder", tokenizer_dir),
        "vae_bfl": dm.write_vae(tiny_vae, str(root / "vae" / "ae_tiny.safetensors")),
        "vae_folder": dm.write_vae(tiny_vae, str(root / "diffusers" / "z_image_tiny" / "vae"), "folder"),
        "root": str(root),
    }
    (root / "diffusers" / "z_image_tiny" / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}')
    return files


@pytest.fixture()
def standalone_models(model_files, tokenizer_dir, monkeypatch):
    """Point the nodes' standalone fallback at the tiny models folder tree."""
    from zimage_pack.nodes import comfy_services

    monkeypatch.setattr(comfy_services, "_standalone_root", model_files["root"])
    monkeypatch.setenv("ZIMAGE_TOKENIZER_DIR", tokenizer_dir)
    return model_files
