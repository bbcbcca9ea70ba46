"""ComfyUI imported in process (``--cpu``), for what needs ComfyUI's own node classes: writing the example
workflows (their widget order comes from the node definitions) and the in-ComfyUI tests.

``import_comfyui(folder)`` must run before anything imports ``comfy``: ComfyUI reads its flags at import.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_comfyui(folder: str, cpu: bool = True) -> None:
    """ComfyUI at ``folder`` importable and imported with ``--cpu`` (``cpu=False``: ComfyUI's own device choice,
    dynamic VRAM on NVIDIA, as a default server runs); the pack importable as ``zimage_pack``."""
    if folder not in sys.path:
        sys.path.insert(0, str(folder))
    saved, sys.argv = sys.argv, [sys.argv[0]] + (["--cpu"] if cpu else [])
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401
        import comfy.model_management  # noqa: F401
    finally:
        sys.argv = saved
    import_pack()


def import_pack() -> None:
    if "zimage_pack" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("zimage_pack", os.path.join(ROOT, "__init__.py"), submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["zimage_pack"] = pack
    spec.loader.exec_module(pack)


_CLASSES: dict | None = None


def node_classes() -> dict:
    """Every node class a ComfyUI server would have here: the built-in ones, ``comfy_extras`` and this pack's."""
    global _CLASSES
    if _CLASSES is None:
        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        from zimage_pack.nodes.extension import NODES

        _CLASSES = {**nodes.NODE_CLASS_MAPPINGS, **{cls.GET_SCHEMA().node_id: cls for cls in NODES}}
    return _CLASSES


def display_names() -> dict:
    import nodes

    node_classes()
    from zimage_pack.nodes.extension import NODES

    return {**nodes.NODE_DISPLAY_NAME_MAPPINGS, **{cls.GET_SCHEMA().node_id: cls.GET_SCHEMA().display_name for cls in NODES}}
