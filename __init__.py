"""Z-Image nodes for ComfyUI. The nodes (ComfyUI side) live in ``nodes/``; the diffusers engine used without
ComfyUI in ``loaders/`` and ``samplers/``; the queue client in ``client/`` (which must import neither torch
nor the engine)."""

__all__ = ["comfy_entrypoint"]

# The node help pages (web/docs/<node id>.md), which ComfyUI's frontend shows in its node help panel.
WEB_DIRECTORY = "./web"


def __getattr__(name):
    # Loaded on first use (ComfyUI reads it right after import), so ``zimage_pack.client`` and the engine
    # can be imported without ComfyUI.
    if name == "comfy_entrypoint":
        from .nodes.extension import comfy_entrypoint

        return comfy_entrypoint
    raise AttributeError(name)
