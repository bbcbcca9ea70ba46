"""The one place that touches ComfyUI's runtime (folder_paths, model management, progress bar,
previews, interruption). Every service has a standalone fallback, so the nodes also run from a
plain script or the tests with no ComfyUI installed."""

from __future__ import annotations

import errno
import logging
import os

import torch

from ..loaders import residency
from ..loaders.errors import ZImageInputError
from ..loaders.confined_paths import check_output_prefix, resolve_inside
from ..loaders.file_names import clean_file_name, free_path
from ..samplers.memory_budget import check_sampling_fits, check_vae_fits

log = logging.getLogger("zimage")

try:  # inside ComfyUI
    import comfy.model_management as _mm
    import comfy.utils as _comfy_utils
    import folder_paths as _folder_paths

    IN_COMFYUI = True
except ImportError:  # a script or the tests
    _mm = _comfy_utils = _folder_paths = None
    IN_COMFYUI = False

BUNDLE_FOLDER = "zimage_bundles"  # 2-step (step-decoupled) bundles: models/zimage_bundles
if IN_COMFYUI and BUNDLE_FOLDER not in _folder_paths.folder_names_and_paths:
    _folder_paths.folder_names_and_paths[BUNDLE_FOLDER] = ([os.path.join(_folder_paths.models_dir, BUNDLE_FOLDER)], {".safetensors"})

# Standalone: models sit under one root with ComfyUI's folder names (diffusion_models/, text_encoders/, vae/...).
_standalone_root = os.environ.get("ZIMAGE_MODELS_DIR", "")
DIFFUSERS_FOLDER = "diffusers"
MODEL_EXTENSIONS = (".safetensors", ".sft", ".gguf")


def set_models_root(path: str) -> None:
    """Where the standalone fallback looks for model folders (ComfyUI's layout)."""
    global _standalone_root
    _standalone_root = path


def _folder_dirs(folder: str) -> list[str]:
    if IN_COMFYUI:
        try:
            return list(_folder_paths.get_folder_paths(folder))
        except KeyError:
            return []
    return [os.path.join(_standalone_root, folder)] if _standalone_root else []


def list_models(folder: str, with_diffusers_folders: bool = False) -> list[str]:
    """File names the loader offers: the folder's safetensors files, plus diffusers folders."""
    names = _folder_paths.get_filename_list(folder) if IN_COMFYUI else []
    # ComfyUI's own lists leave out .gguf (its folders declare only its own extensions, and we do not
    # change them for every other node): walk the folders for those ourselves
    for base in _folder_dirs(folder):
        for dirpath, _, files in os.walk(base):
            names += [os.path.relpath(os.path.join(dirpath, f), base) for f in files if f.endswith(MODEL_EXTENSIONS)]
    names = [n for n in names if n.endswith(MODEL_EXTENSIONS)]
    if with_diffusers_folders:
        for base in _folder_dirs(DIFFUSERS_FOLDER):
            if os.path.isdir(base):
                names += [f"{DIFFUSERS_FOLDER}/{d}" for d in os.listdir(base) if os.path.isfile(os.path.join(base, d, "model_index.json"))]
    return sorted(set(names))


def model_path(folder: str, name: str) -> str:
    """Full path of a listed model name, confined to that models folder (loaders/confined_paths.py):
    no absolute path, no '..', no symlink that leads out of the folder."""
    sub_folder, rest = (DIFFUSERS_FOLDER, name[len(DIFFUSERS_FOLDER) + 1:]) if isinstance(name, str) and name.startswith(DIFFUSERS_FOLDER + "/") else (folder, name)
    what, label = f"{folder} model", f"ComfyUI's models/{sub_folder} folder"
    path = resolve_inside(_folder_dirs(sub_folder), rest, what, label)
    if not os.path.exists(path):
        try:
            os.stat(path)
            problem = "a link that cannot be followed"
        except OSError as exc:
            problem = "a symlink loop" if exc.errno == errno.ELOOP else "a broken link"
        raise ZImageInputError(what, f"'{name}' is {problem}", "a model file or a link to one", f"fix or remove the link '{name}' in {label}")
    if not os.access(path, os.R_OK):
        raise ZImageInputError(what, f"'{name}', which this process may not read (permissions)", "a readable file", f"fix the file's permissions in {label}")
    return path


def new_model_path(folder: str, filename: str, overwrite: bool = False) -> str:
    """Where a file the pack writes goes: the first directory of that models folder, under a checked
    name; an existing file is kept (a counter is added) unless ``overwrite``."""
    name = clean_file_name(filename, ".safetensors")
    dirs = _folder_dirs(folder)
    if not dirs:
        raise ZImageInputError("filename", f"no '{folder}' models folder", "ComfyUI's models folder", "run inside ComfyUI or set ZIMAGE_MODELS_DIR")
    os.makedirs(dirs[0], exist_ok=True)
    return free_path(dirs[0], name, overwrite)


class _Held(torch.nn.Module):
    """The container ComfyUI's ModelPatcher holds: it writes ``.device`` and its bookkeeping onto the
    model it manages, and diffusers' and transformers' models have a read-only ``.device``."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


class _ComfyMemory(residency.HostMemoryManager):
    """Our models in ComfyUI's memory manager: each wrapped once in a ModelPatcher and loaded with
    ``load_models_gpu``, so they sit in ``current_loaded_models`` and ComfyUI can evict them (when
    VAEDecode, an upscaler or another pack needs the VRAM, and on POST /free)."""

    def patcher(self, module: torch.nn.Module):
        patcher = module.__dict__.get("_zimage_patcher")
        if patcher is None:
            import comfy.model_patcher

            patcher = comfy.model_patcher.ModelPatcher(_Held(module), load_device=_mm.get_torch_device(), offload_device=_mm.unet_offload_device())
            module.__dict__["_zimage_patcher"] = patcher
        return patcher

    def load(self, modules, device, extra_bytes):
        # a full load: ComfyUI's partial (lowvram) loading casts only its own layer types
        _mm.load_models_gpu([self.patcher(m) for m in modules], memory_required=extra_bytes, force_full_load=True)

    def evictable_bytes(self, device, module):
        # every model ComfyUI holds on the device can be offloaded by its free_memory, ours included
        return sum(loaded.model_loaded_memory() for loaded in list(_mm.current_loaded_models)
                   if loaded.model is not None and loaded.device == device)

    def release(self, module):
        patcher = module.__dict__.get("_zimage_patcher")
        for loaded in list(_mm.current_loaded_models):
            if patcher is not None and loaded.model is patcher:
                loaded.model_unload()
                _mm.current_loaded_models.remove(loaded)


if IN_COMFYUI:
    residency.set_host_memory_manager(_ComfyMemory())


def find_model(folder: str, name: str) -> str | None:
    """A listed model's path, or None (for hashing into metadata: a missing file is no error there)."""
    try:
        return model_path(folder, name)
    except ZImageInputError:
        return None


def output_image_path(prefix: str, width: int, height: int, extension: str) -> tuple[str, str, str]:
    """(full path, subfolder, file name) for a new picture: ComfyUI's own numbering in its output
    folder; standalone, ZIMAGE_OUTPUT_DIR (default ./out) with the same numbering. The prefix is
    checked first (no path out of the folder, no hidden file, no control character)."""
    prefix = check_output_prefix(prefix)
    if IN_COMFYUI:
        folder, name, counter, subfolder, _ = _folder_paths.get_save_image_path(prefix, _folder_paths.get_output_directory(), width, height)
        file_name = f"{name}_{counter:05}_.{extension}"
        return os.path.join(folder, file_name), subfolder, file_name
    root = os.environ.get("ZIMAGE_OUTPUT_DIR", os.path.join(os.getcwd(), "out"))
    subfolder, stem = os.path.split(prefix)
    folder = resolve_inside([root], subfolder, "filename_prefix", "the output folder", must_exist=False) if subfolder else root
    os.makedirs(folder, exist_ok=True)
    counter = 1
    while os.path.exists(os.path.join(folder, f"{stem}_{counter:05}_.{extension}")):
        counter += 1
    file_name = f"{stem}_{counter:05}_.{extension}"
    return os.path.join(folder, file_name), subfolder, file_name


def input_folder() -> str:
    return _folder_paths.get_input_directory() if IN_COMFYUI else os.environ.get("ZIMAGE_INPUT_DIR", os.getcwd())


def input_files(extensions: tuple[str, ...]) -> list[str]:
    """Files in ComfyUI's input folder (and its subfolders) with these extensions, for a node's list;
    hidden files and folders and links that lead out of the folder are left out."""
    base = os.path.realpath(input_folder())
    names = []
    for dirpath, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            path = os.path.join(dirpath, file)
            if file.startswith(".") or not file.lower().endswith(extensions):
                continue
            if os.path.commonpath([base, os.path.realpath(path)]) == base:
                names.append(os.path.relpath(path, base).replace(os.sep, "/"))
    return sorted(names)


def input_file(name: str, what: str = "image", expected: str = "a PNG or WebP") -> str:
    """A file in ComfyUI's input folder, confined to it (no absolute path, '..' or link out of it)."""
    path = resolve_inside([input_folder()], name, what, "ComfyUI's input folder")
    if not os.path.isfile(path):
        raise ZImageInputError(what, f"'{name}', which is not a readable file", expected + " in ComfyUI's input folder",
                               "put the file into ComfyUI's input folder (or upload it) and pick it from the list")
    return path


def bundled_tokenizer_dir() -> str:
    """ComfyUI ships the Qwen2 BPE tokenizer files; standalone, ZIMAGE_TOKENIZER_DIR points at a copy."""
    if IN_COMFYUI:
        # ``comfy`` is a namespace package (no __file__); model_management.py sits in it
        return os.path.join(os.path.dirname(os.path.realpath(_mm.__file__)), "text_encoders", "qwen25_tokenizer")
    return os.environ.get("ZIMAGE_TOKENIZER_DIR", "")


def compute_device() -> torch.device:
    return _mm.get_torch_device() if IN_COMFYUI else residency.pick_device()


def make_room(need_bytes: int, device: torch.device) -> None:
    if IN_COMFYUI:
        _mm.free_memory(need_bytes, device)


def to_compute_device(module: torch.nn.Module, keep: tuple = ()) -> torch.device:
    device = compute_device()
    residency.place(module, device, make_room, keep)
    return device


def enable_offload(cnet, device: torch.device) -> None:
    """diffusers' group offloading at leaf level: each layer of the control branch is brought to the
    device when it runs (prefetched on a side stream on CUDA). Leaf level, because the pack calls the
    control blocks one by one and never the ControlNet's own forward, where block-level offloading
    would load the remaining parts."""
    if getattr(cnet.module, "_zimage_group_offload", None) == device:
        return
    cnet.module.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="leaf_level",
                                     use_stream=device.type == "cuda")
    cnet.module._zimage_group_offload = device


def prepare_model_for_sampling(model, batch: int, height: int, width: int, cfg: bool = False) -> torch.device:
    """Everything one sampling run needs on the compute device: first the check that the run fits
    (refused before anything moves or is allocated), then ControlNet hint latents (the VAE visits the
    device alone), the ControlNets (streamed block by block from the host when loaded with offload),
    and the transformer."""
    device = compute_device()
    check_sampling_fits(model, batch, height, width, cfg, device)
    controls = getattr(model, "controls", ())
    for spec in controls:
        check_vae_fits(spec.vae, height * 8, width * 8, batch, 0, False, device)
    for spec in controls:
        to_compute_device(spec.vae.model)
        spec.control_latents(batch, height, width, torch.device("cpu"), torch.float32)
    resident = []
    for spec in controls:
        cnet = spec.controlnet
        if cnet.offload and device.type != "cpu":
            enable_offload(cnet, device)
        else:
            to_compute_device(cnet.module, keep=tuple(resident))
            resident.append(cnet.module)
    activations = residency.transformer_activation_bytes(model.module, batch, height, width, dtype=model.compute_dtype)
    mode = residency.place_transformer(model.module, device, getattr(model, "memory_mode", "auto"), activations, make_room, keep=tuple(resident))
    if mode != "full":
        log.info("Z-Image: transformer in %s mode on %s", mode, device)
    return device


def check_interrupt() -> None:
    if IN_COMFYUI:
        _mm.throw_exception_if_processing_interrupted()


class Progress:
    """ComfyUI's progress bar with live latent previews; a log line per step standalone."""

    def __init__(self, total: int, device: torch.device):
        self.total = total
        self.bar = _comfy_utils.ProgressBar(total) if IN_COMFYUI else None
        self.previewer = _previewer(device) if IN_COMFYUI else None

    def __call__(self, step: int, total: int, x0_model_space: torch.Tensor) -> None:
        if self.bar is None:
            log.debug("step %d/%d", step + 1, total)
            return
        preview = None
        if self.previewer is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0_model_space.float())
        self.bar.update_absolute(step + 1, total, preview)


def _previewer(device):
    """ComfyUI's own previewer for FLUX-VAE latents, honouring the user's preview setting."""
    try:
        import comfy.latent_formats
        import latent_preview

        return latent_preview.get_previewer(device, comfy.latent_formats.Flux())
    except Exception as exc:  # previews are a nicety: never fail a run for them
        log.warning("Z-Image: no live previews (%s)", exc)
        return None
