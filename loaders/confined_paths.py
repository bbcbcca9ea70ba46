"""Names that come from a prompt, kept inside the folder they belong to.

Anyone who can queue a prompt on a server started with --listen chooses these names, so a name is
checked as text first, before anything touches the file system (an absolute path, a '..' part, a NUL
or control character is refused without looking: the error cannot tell whether something outside
exists), then resolved with every symlink followed, and refused if the result leaves the folder.
ComfyUI's own nodes follow the same rule (LoadImage's annotated paths, SaveImage's prefix check); the
pack applies it to every input that names a file, inside ComfyUI and out. Errors name the input and the
name as given, never the server's folders and never a file's content.
"""

from __future__ import annotations

import os

from .errors import ZImageInputError

MAX_NAME_BYTES = 1024  # a relative name with its subfolders
MAX_PART_BYTES = 255  # one file or folder name (ext4, NTFS, APFS)
_WINDOWS_REFUSED = set('<>:"|?*')


def _control_characters(text: str) -> list[str]:
    return sorted({c for c in text if ord(c) < 32 or ord(c) == 127})


def check_relative_name(name, what: str, folder_label: str) -> str:
    """``name`` as a relative path inside a folder (subfolders allowed, '/' separated), or an error.
    Checked as text only: nothing is opened or looked up."""
    how = f"pick a file from the list (files in {folder_label}); paths outside it are not allowed"
    if not isinstance(name, str):
        raise ZImageInputError(what, type(name).__name__, f"a file name in {folder_label}", how)
    if not name:
        raise ZImageInputError(what, "an empty name", f"a file name in {folder_label}", how)
    bad = _control_characters(name)
    if bad:
        raise ZImageInputError(what, f"a name with control characters ({', '.join(repr(c) for c in bad)})", f"a file name in {folder_label}", how)
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ZImageInputError(what, f"a name of {len(name.encode('utf-8'))} bytes", f"at most {MAX_NAME_BYTES} bytes", "use a shorter name")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ZImageInputError(what, f"an absolute path ({_shown(name)})", f"a file name relative to {folder_label}", how)
    parts = name.replace("\\", "/").split("/")
    if any(part in ("..", ".") for part in parts):
        raise ZImageInputError(what, f"a path with '..' or '.' parts ({_shown(name)})", f"a file name inside {folder_label}", how)
    if any(not part for part in parts):
        raise ZImageInputError(what, f"a path with an empty part ({_shown(name)})", f"a file name inside {folder_label}", how)
    return "/".join(parts)


def resolve_inside(folders: list[str], name, what: str, folder_label: str, must_exist: bool = True) -> str:
    """The path of ``name`` in the first of ``folders`` that holds it, with every symlink resolved and
    still inside that folder; refused otherwise (``must_exist`` False: the path in the first folder)."""
    relative = check_relative_name(name, what, folder_label)
    for folder in folders:
        base = os.path.realpath(folder)
        candidate = os.path.join(base, relative)
        real = os.path.realpath(candidate)
        if os.path.commonpath([base, real]) != base:
            # a symlink inside the folder whose target leaves it: refused whether or not the target exists
            raise ZImageInputError(what, f"'{_shown(name)}', a link that leads out of {folder_label}", f"a file inside {folder_label}",
                                   f"replace the link by the file itself (copy it into {folder_label})")
        if os.path.lexists(candidate) or not must_exist:
            return real
    raise ZImageInputError(what, f"no file '{_shown(name)}' in {folder_label}", f"a file in {folder_label}",
                           f"put the file into {folder_label} (or upload it), refresh, and pick it from the list")


def check_output_prefix(prefix, what: str = "filename_prefix") -> str:
    """A prefix for pictures in the output folder (subfolders allowed): no absolute path, no '..', no
    hidden file or folder, no control or Windows-refused characters, no over-long part. Returns it."""
    how = "type a plain name such as z-image, or folder/name for a subfolder of the output folder"
    if not isinstance(prefix, str):
        raise ZImageInputError(what, type(prefix).__name__, "a file name prefix (text)", how)
    relative = check_relative_name(prefix, what, "ComfyUI's output folder")
    for part in relative.split("/"):
        if part.startswith("."):
            raise ZImageInputError(what, f"'{_shown(prefix)}', which would make a hidden file or folder", "names that do not start with '.'", how)
        if part != part.strip():
            raise ZImageInputError(what, f"'{_shown(prefix)}' with a space at the start or end of a name", "names without leading or trailing spaces", how)
        bad = sorted({c for c in part if c in _WINDOWS_REFUSED})
        if bad:
            raise ZImageInputError(what, f"'{_shown(prefix)}' with characters file systems refuse ({', '.join(repr(c) for c in bad)})",
                                   "letters, digits, spaces, '-', '_' and '.'", "remove those characters")
        # the counter and extension ComfyUI adds ("_00001_.webp") must still fit in one name
        if len(part.encode("utf-8")) > MAX_PART_BYTES - 16:
            raise ZImageInputError(what, f"a name of {len(part.encode('utf-8'))} bytes", f"at most {MAX_PART_BYTES - 16} bytes per name", "shorten it")
    return relative


def _shown(name: str, limit: int = 80) -> str:
    """The name as the user gave it, cut short (an error is no place for a 5000-character name)."""
    return name if len(name) <= limit else name[:limit] + "…"
