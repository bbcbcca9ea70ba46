"""Validate and run API-format workflows without a ComfyUI server.

Validation follows what ComfyUI checks before it queues a prompt (``validate_prompt``): the class
exists, required inputs are present, links point at an existing node's output of the right type,
combo values are in the list, numbers are within min/max. Errors use ComfyUI's error types.
"""

from __future__ import annotations

from .graph_format import VIRTUAL_NODES, is_link, widget_names
from .native_nodes import NATIVE_NODE_CLASS_MAPPINGS


def all_node_classes() -> dict:
    from .. import NODE_CLASS_MAPPINGS

    return {**NATIVE_NODE_CLASS_MAPPINGS, **NODE_CLASS_MAPPINGS}


def validate_prompt(prompt: dict, classes: dict | None = None) -> list[tuple[str, str, str]]:
    """[(node id, error type, details)]; empty when ComfyUI would accept the prompt."""
    classes = classes or all_node_classes()
    errors = []
    for node_id, node in prompt.items():
        cls = classes.get(node.get("class_type"))
        if cls is None:
            errors.append((node_id, "missing_node_type", str(node.get("class_type"))))
            continue
        types = cls.INPUT_TYPES()
        inputs = node.get("inputs", {})
        custom_checked = _validate_inputs_arguments(cls)
        for section in ("required", "optional"):
            for name, spec in types.get(section, {}).items():
                if name not in inputs:
                    if section == "required":
                        errors.append((node_id, "required_input_missing", name))
                    continue
                if name in custom_checked:
                    continue  # ComfyUI leaves these to the node's VALIDATE_INPUTS
                errors += [(node_id, kind, f"{name}: {detail}") for kind, detail in _check_input(prompt, classes, spec, inputs[name])]
        if custom_checked:
            verdict = cls.VALIDATE_INPUTS(**{n: inputs[n] for n in custom_checked if n in inputs and not is_link(inputs[n])})
            if verdict is not True:
                errors.append((node_id, "custom_validation_failed", str(verdict)))
    return errors


def _validate_inputs_arguments(cls) -> list[str]:
    """The inputs a node's VALIDATE_INPUTS takes (ComfyUI validates those only through it)."""
    if not hasattr(cls, "VALIDATE_INPUTS"):
        return []
    code = cls.VALIDATE_INPUTS.__func__.__code__ if hasattr(cls.VALIDATE_INPUTS, "__func__") else cls.VALIDATE_INPUTS.__code__
    return [n for n in code.co_varnames[: code.co_argcount] if n != "cls"]


def _check_input(prompt, classes, spec, value):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if is_link(value):
        source = prompt.get(str(value[0]))
        if source is None or source.get("class_type") not in classes:
            return [("bad_linked_input", f"links to missing node {value[0]}")]
        outputs = classes[source["class_type"]].RETURN_TYPES
        if value[1] >= len(outputs):
            return [("bad_linked_input", f"output slot {value[1]} of {source['class_type']} does not exist")]
        out_kind = outputs[value[1]]
        if kind != "*" and out_kind != "*" and out_kind != kind and not isinstance(kind, list):
            return [("return_type_mismatch", f"{source['class_type']} gives {out_kind}, input wants {kind}")]
        return []
    if isinstance(kind, list):
        return [] if value in kind else [("value_not_in_list", f"{value!r} not in {kind[:5]}{'…' if len(kind) > 5 else ''}")]
    python_type = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}.get(kind)
    if python_type is None:
        return [("invalid_input_type", f"a value {value!r} where a {kind} link is needed")]
    if not isinstance(value, python_type) or (kind in ("INT", "FLOAT") and isinstance(value, bool)):
        return [("invalid_input_type", f"{value!r} is not {kind}")]
    if kind in ("INT", "FLOAT"):
        if "min" in options and value < options["min"]:
            return [("value_smaller_than_min", f"{value} < {options['min']}")]
        if "max" in options and value > options["max"]:
            return [("value_bigger_than_max", f"{value} > {options['max']}")]
    return []


def ui_to_api(workflow: dict, classes: dict | None = None) -> dict:
    """Read a UI-format workflow the way the frontend turns it into a prompt (widgets in declared order)."""
    classes = classes or all_node_classes()
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        cls = classes.get(node["type"])
        inputs = {}
        if cls is not None:
            names = widget_names(cls.INPUT_TYPES())
            values = list(node.get("widgets_values", []))
            if len(values) != len(names):
                raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values for widgets {names}")
            inputs.update({n: v for n, v in zip(names, values) if "::" not in n})
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def run_prompt(prompt: dict, classes: dict | None = None, extra_pnginfo: dict | None = None) -> tuple[dict, dict]:
    """Execute every node (dependencies first); returns ({node id: outputs}, {node id: ui dict}).
    Hidden inputs get what ComfyUI gives: PROMPT (this graph), EXTRA_PNGINFO (e.g. {"workflow": …}), UNIQUE_ID.

    Lists as ComfyUI runs them: every output is a list; a node is called once per item of its longest
    input (shorter ones repeat their last item) unless it sets INPUT_IS_LIST, and an output the node
    marks in OUTPUT_IS_LIST is joined rather than collected. An output slot holding one value is
    returned as that value, a longer one as the list."""
    classes = classes or all_node_classes()
    errors = validate_prompt(prompt, classes)
    if errors:
        raise ValueError(f"prompt failed validation: {errors}")
    lists: dict[str, list[list]] = {}
    ui: dict[str, dict] = {}

    def run(node_id: str) -> list[list]:
        if node_id in lists:
            return lists[node_id]
        node = prompt[node_id]
        cls = classes[node["class_type"]]
        kwargs = {name: (run(str(v[0]))[v[1]] if is_link(v) else [v]) for name, v in node["inputs"].items()}
        for name, kind in cls.INPUT_TYPES().get("hidden", {}).items():
            kwargs[name] = [{"PROMPT": prompt, "EXTRA_PNGINFO": extra_pnginfo, "UNIQUE_ID": node_id}.get(kind)]
        if getattr(cls, "INPUT_IS_LIST", False):
            calls = [kwargs]
        else:
            count = max((len(v) for v in kwargs.values()), default=1)
            calls = [{k: v[min(i, len(v) - 1)] for k, v in kwargs.items()} for i in range(count)]
        outs = []
        for call in calls:
            out = getattr(cls(), cls.FUNCTION)(**call)
            if isinstance(out, dict):  # ComfyUI's {"ui": ..., "result": (...)} form
                for key, value in out.get("ui", {}).items():
                    ui.setdefault(node_id, {}).setdefault(key, []).extend(value if isinstance(value, list) else [value])
                out = out.get("result", ())
            outs.append(tuple(out))
        is_list = getattr(cls, "OUTPUT_IS_LIST", (False,) * len(cls.RETURN_TYPES))
        lists[node_id] = [[x for o in outs for x in o[j]] if is_list[j] else [o[j] for o in outs] for j in range(len(cls.RETURN_TYPES))]
        return lists[node_id]

    for node_id in prompt:
        run(node_id)
    results = {node_id: tuple(slot[0] if len(slot) == 1 else slot for slot in slots) for node_id, slots in lists.items()}
    return results, ui
