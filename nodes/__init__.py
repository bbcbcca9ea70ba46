"""The ComfyUI side: V3 node classes (``*_nodes.py``, registered in ``extension.py``) and the native backend
(``native_*.py``). ``comfy_services`` also runs without ComfyUI (folder lookups for scripts and tests)."""
