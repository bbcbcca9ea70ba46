"""One description of a graph, written out in both of ComfyUI's formats.

A graph is a list of ``Node`` records; links name their source by node id and output slot. The
UI format needs each widget value in the order the node declares its widgets, so that order is
taken from the node classes themselves: workflows cannot drift from the node definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Frontend-only node types that hold no computation (notes on the canvas).
VIRTUAL_NODES = {"Note", "MarkdownNote"}


@dataclass
class Node:
    id: int
    class_type: str
    inputs: dict = field(default_factory=dict)  # name -> value, or (source_id, output_slot)
    title: str = ""
    pos: tuple = (0, 0)
    size: tuple = (320, 130)
    models: tuple = ()  # ({"name", "url", "directory"}, ...): ComfyUI's frontend offers these downloads


def is_link(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (int, str)) and isinstance(value[1], int) and not isinstance(value[0], bool)


LIST_SHAPE = 6  # LiteGraph's grid shape: the frontend draws list outputs with it


def widget_names(input_types: dict) -> list[str]:
    """Inputs the frontend shows as widgets, in order, with the seed's extra control value."""
    names = []
    for section in ("required", "optional"):
        for name, spec in input_types.get(section, {}).items():
            kind = spec[0]
            options = spec[1] if len(spec) > 1 else {}
            if (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")) and not options.get("forceInput"):
                names.append(name)
                if options.get("control_after_generate"):
                    names.append(f"{name}::control_after_generate")
                if options.get("image_upload"):
                    names.append(f"{name}::upload")
    return names


def output_types(node_class) -> tuple:
    return tuple(node_class.RETURN_TYPES)


def widget_defaults(input_types: dict) -> dict:
    """The default of every widget input the node declares (what the frontend would send untouched)."""
    defaults = {}
    for section in ("required", "optional"):
        for name, spec in input_types.get(section, {}).items():
            options = spec[1] if len(spec) > 1 else {}
            if name in widget_names({section: {name: spec}}) and "default" in options:
                defaults[name] = options["default"]
    return defaults


def to_api(nodes: list[Node], classes: dict, display_names: dict | None = None) -> dict:
    display_names = display_names or {}
    prompt = {}
    for node in nodes:
        if node.class_type in VIRTUAL_NODES:
            continue
        given = {k: ([str(v[0]), v[1]] if is_link(v) else v) for k, v in node.inputs.items()}
        inputs = {**widget_defaults(classes[node.class_type].INPUT_TYPES()), **given}
        prompt[str(node.id)] = {"class_type": node.class_type, "inputs": inputs, "_meta": {"title": node.title or display_names.get(node.class_type, node.class_type)}}
    return prompt


def to_ui(nodes: list[Node], classes: dict) -> dict:
    links, ui_nodes = [], []
    by_id = {n.id: n for n in nodes}
    link_ids: dict[tuple, list[int]] = {}
    for node in nodes:
        for name, value in node.inputs.items():
            if is_link(value):
                src, slot = value
                kind = output_types(classes[by_id[src].class_type])[slot]
                link_id = len(links) + 1
                links.append([link_id, src, slot, node.id, None, kind, name])
                link_ids.setdefault((src, slot), []).append(link_id)
    for order, node in enumerate(nodes):
        entry = {"id": node.id, "type": node.class_type, "pos": list(node.pos), "size": list(node.size), "flags": {}, "order": order, "mode": 0,
                 "properties": {"Node name for S&R": node.class_type, **({"models": [dict(m) for m in node.models]} if node.models else {})}}
        if node.title:
            entry["title"] = node.title
        if node.class_type in VIRTUAL_NODES:
            entry["widgets_values"] = [node.inputs["text"]]
            entry["inputs"], entry["outputs"] = [], []
            ui_nodes.append(entry)
            continue
        cls = classes[node.class_type]
        types = cls.INPUT_TYPES()
        inputs = []
        for section in ("required", "optional"):
            for name, spec in types.get(section, {}).items():
                if name in node.inputs and is_link(node.inputs[name]):
                    link = next(link for link in links if link[3] == node.id and link[6] == name)
                    link[4] = len(inputs)
                    entry_input = {"name": name, "type": "COMBO" if isinstance(spec[0], list) else spec[0], "link": link[0]}
                    if name in widget_names({section: {name: spec}}):  # a widget fed by a link (the frontend's converted widget)
                        entry_input["widget"] = {"name": name}
                    inputs.append(entry_input)
        entry["inputs"] = inputs
        is_list = getattr(cls, "OUTPUT_IS_LIST", ())
        entry["outputs"] = [{"name": (getattr(cls, "RETURN_NAMES", None) or output_types(cls))[i], "type": kind, "links": link_ids.get((node.id, i), []), "slot_index": i,
                             **({"shape": LIST_SHAPE} if i < len(is_list) and is_list[i] else {})}
                            for i, kind in enumerate(output_types(cls))]
        values = []
        for name in widget_names(types):
            if name.endswith("::control_after_generate"):
                values.append("fixed")
            elif name.endswith("::upload"):
                values.append("image")
            else:
                spec = types.get("required", {}).get(name) or types.get("optional", {}).get(name)
                default = spec[1].get("default") if len(spec) > 1 else None
                value = node.inputs.get(name, default)
                values.append(default if is_link(value) else value)  # a linked widget keeps its default beside the link
        entry["widgets_values"] = values
        ui_nodes.append(entry)
    return {
        "last_node_id": max(n.id for n in nodes), "last_link_id": len(links), "nodes": ui_nodes,
        "links": [link[:6] for link in links], "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
    }
