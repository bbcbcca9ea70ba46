"""A queue client for ComfyUI servers: an API workflow × a table of overrides, checked against each
server's /object_info, spread over servers by queue length, tracked in a resumable job file.
Standard library plus websocket-client; imports neither torch nor the engine."""
