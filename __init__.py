"""Z-Image nodes for ComfyUI. The engine lives in ``loaders/`` and ``samplers/``; the nodes in ``nodes/``;
the queue client in ``client/`` (which must import neither torch nor the engine)."""

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


def __getattr__(name):
    # Loaded on first use (ComfyUI reads them right after import), so ``zimage_pack.client`` can be
    # imported without torch, diffusers and the nodes.
    if name in __all__:
        from . import nodes

        return getattr(nodes, name)
    raise AttributeError(name)
