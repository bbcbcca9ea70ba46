"""Names of files the pack writes: checked and cleaned, never a silent overwrite."""

from __future__ import annotations

import os

from .errors import ZImageInputError

_REFUSED = set('<>:"|?*')  # refused by Windows file systems; refused everywhere so workflows stay portable
_MAX_BYTES = 255  # the longest file name ext4, NTFS and APFS accept


def clean_file_name(name: str, extension: str, what: str = "filename") -> str:
    """``name`` as a bare file name ending in ``extension``, or a clear error saying what is wrong."""
    if not isinstance(name, str):
        raise ZImageInputError(what, type(name).__name__, "a file name (text)", "type a name")
    stem = name.strip()
    if stem.lower().endswith(extension):
        stem = stem[: -len(extension)]
    how = "type a plain name such as z_image_2step_bundle (the folder is fixed: models/zimage_bundles)"
    if not stem:
        raise ZImageInputError(what, f"an empty name ({name!r})", "a file name", how)
    if "/" in stem or "\\" in stem or stem in (".", ".."):
        raise ZImageInputError(what, f"{name!r}, a path", "a file name without folders or path separators", how)
    if stem.startswith("."):
        raise ZImageInputError(what, f"{name!r}, which would be a hidden file", "a name that does not start with '.'", how)
    bad = sorted({c for c in stem if c in _REFUSED or ord(c) < 32})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ZImageInputError(what, f"{name!r} with characters file systems refuse ({shown})", "letters, digits, spaces, '-', '_' and '.'", "remove those characters")
    full = stem + extension
    if len(full.encode("utf-8")) > _MAX_BYTES:
        raise ZImageInputError(what, f"a name of {len(full.encode('utf-8'))} bytes", f"at most {_MAX_BYTES} bytes with '{extension}'", "shorten the name")
    return full


def free_path(directory: str, file_name: str, overwrite: bool) -> str:
    """``directory/file_name``; when that exists and ``overwrite`` is off, the first free
    ``stem_00001.ext``, ``stem_00002.ext``… (as ComfyUI's own save nodes count)."""
    path = os.path.join(directory, file_name)
    if overwrite or not os.path.exists(path):
        return path
    stem, ext = os.path.splitext(file_name)
    for counter in range(1, 100000):
        candidate = os.path.join(directory, f"{stem}_{counter:05d}{ext}")
        if not os.path.exists(candidate):
            return candidate
    raise ZImageInputError("filename", f"99999 files named {stem}_NNNNN{ext}", "a free name", "choose another name")
