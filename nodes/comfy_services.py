"""The nodes' one way to ComfyUI's folders (models, input, output: every name confined to its folder) and
its interruption. Each service also works without ComfyUI (a models root, ZIMAGE_INPUT_DIR,
ZIMAGE_OUTPUT_DIR), so scripts and the default tests use the same confinement."""

from __future__ import annotations

import errno
import logging
import os


from ..loaders.errors import ZImageInputError
from ..loaders.confined_paths import check_output_prefix, resolve_inside
from ..loaders.file_names import clean_file_name, free_path

log = logging.getLogger("zimage")

try:  # inside ComfyUI
    import comfy.model_management as _mm
    import folder_paths as _folder_paths

    IN_COMFYUI = True
except ImportError:  # a script or the tests
    _mm = _folder_paths = None
    IN_COMFYUI = False

BUNDLE_FOLDER = "zimage_bundles"  # 2-step (step-decoupled) bundles: models/zimage_bundles
if IN_COMFYUI and BUNDLE_FOLDER not in _folder_paths.folder_names_and_paths:
    _folder_paths.folder_names_and_paths[BUNDLE_FOLDER] = ([os.path.join(_folder_paths.models_dir, BUNDLE_FOLDER)], {".safetensors"})

# Standalone: models sit under one root with ComfyUI's folder names (diffusion_models/, text_encoders/, vae/...).
_standalone_root = os.environ.get("ZIMAGE_MODELS_DIR", "")
DIFFUSERS_FOLDER = "diffusers"
MODEL_EXTENSIONS = (".safetensors", ".sft", ".gguf")


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


def check_interrupt() -> None:
    if IN_COMFYUI:
        _mm.throw_exception_if_processing_interrupted()
