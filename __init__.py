"""Z-Image nodes for ComfyUI. The engine lives in ``loaders/`` and ``samplers/``; the nodes in ``nodes/``."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
