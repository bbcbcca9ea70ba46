"""Writes the node help pages ComfyUI's frontend shows in its node help panel (``web/docs/<node id>.md``,
served from the pack's WEB_DIRECTORY) from the node definitions: the description, every input and output
with its tooltip, and the example workflows that use the node. Run with the workflows
(``bash scripts/build_workflows.sh``); a test checks the committed pages equal what this writes."""

from __future__ import annotations

import os

DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web", "docs")


def _kind(io_type) -> str:
    return "choice" if isinstance(io_type, list) else str(io_type)


def page(node_class, workflows: list[str]) -> str:
    schema = node_class.GET_SCHEMA()
    lines = [f"# {schema.display_name}", "", schema.description, "", f"Category: {schema.category}. Node id: `{schema.node_id}`.", ""]
    if schema.inputs:
        lines += ["## Inputs", "", "| input | type | what it is |", "|---|---|---|"]
        for item in schema.inputs:
            optional = " (optional)" if getattr(item, "optional", False) else ""
            lines.append(f"| `{item.id}`{optional} | {_kind(item.get_io_type())} | {(item.tooltip or '').replace('|', '/')} |")
        lines.append("")
    if schema.outputs:
        lines += ["## Outputs", "", "| output | type | what it is |", "|---|---|---|"]
        for item in schema.outputs:
            listed = " (list)" if item.is_output_list else ""
            lines.append(f"| `{item.display_name or item.id}` | {_kind(item.get_io_type())}{listed} | {(item.tooltip or '').replace('|', '/')} |")
        lines.append("")
    if workflows:
        lines += ["## Example workflows", "", *[f"- `example_workflows/{name}.json`" for name in workflows], ""]
    return "\n".join(lines)


def render(nodes: list, graphs: dict) -> dict[str, str]:
    """{file name: markdown} for every node; ``graphs`` maps a workflow name to its Node list."""
    pages = {}
    for node_class in nodes:
        node_id = node_class.GET_SCHEMA().node_id
        used_in = sorted(name for name, graph in graphs.items() if any(n.class_type == node_id for n in graph))
        pages[f"{node_id}.md"] = page(node_class, used_in)
    return pages


def write(pages: dict[str, str]) -> None:
    os.makedirs(DOCS_DIR, exist_ok=True)
    for name in os.listdir(DOCS_DIR):
        if name.endswith(".md") and name not in pages:
            os.remove(os.path.join(DOCS_DIR, name))
    for name, text in pages.items():
        with open(os.path.join(DOCS_DIR, name), "w", encoding="utf-8") as handle:
            handle.write(text)
