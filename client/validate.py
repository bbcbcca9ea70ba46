"""Each row's workflow checked against a server's ``/object_info`` as ComfyUI's validate_prompt
checks it, before anything is sent: the node class exists, the input name exists, required inputs
are there, numbers within min/max, combo values in the list, links point at an existing output."""

from __future__ import annotations

_PYTHON = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}


def _spec(info: dict, name: str):
    inputs = info.get("input", {})
    for section in ("required", "optional"):
        if name in inputs.get(section, {}):
            return inputs[section][name]
    return None


def _kind(spec) -> tuple[object, dict]:
    """(type name or the combo's option list, options)."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if kind == "COMBO":
        return list(options.get("options", [])), options
    return kind, options


def convert(value, spec):
    """A CSV cell (text) as the input's type; other values as they are. Raises ValueError."""
    kind, _ = _kind(spec)
    if not isinstance(value, str) or kind == "STRING" or isinstance(kind, list):
        return value
    try:
        if kind == "INT":
            return int(value)
        if kind == "FLOAT":
            return float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not {'a whole number' if kind == 'INT' else 'a number'}") from None
    if kind == "BOOLEAN":
        if value.strip().lower() in ("true", "1", "yes"):
            return True
        if value.strip().lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{value!r} is not true/false")
    return value


def check_value(value, spec) -> str | None:
    kind, options = _kind(spec)
    if isinstance(kind, list):
        if value not in kind:
            shown = ", ".join(map(repr, kind[:8])) + (" …" if len(kind) > 8 else "")
            return f"{value!r} is not in the list ({shown})" if kind else f"{value!r}: the server lists no choices (no such files there?)"
        return None
    python_type = _PYTHON.get(kind)
    if python_type is None:
        return f"a value {value!r} where a {kind} link is needed"
    if not isinstance(value, python_type) or (kind in ("INT", "FLOAT") and isinstance(value, bool)):
        return f"{value!r} is not {kind}"
    if kind in ("INT", "FLOAT"):
        if "min" in options and value < options["min"]:
            return f"{value} is below the minimum {options['min']}"
        if "max" in options and value > options["max"]:
            return f"{value} is above the maximum {options['max']}"
        step, start = options.get("step", 1), options.get("min", 0)
        if kind == "INT" and isinstance(step, int) and step > 1 and (value - start) % step:
            # ComfyUI's frontend offers only these values; nodes such as the latent sizes refuse others at run time
            near = start + round((value - start) / step) * step
            return f"{value} is not a multiple of {step}{f' from {start}' if start % step else ''} (nearest: {near})"
    return None


def check_graph(graph: dict, object_info: dict, overridden: set[tuple[str, str]] = frozenset()) -> list[str]:
    """Problems (empty: ComfyUI would queue it). ``overridden``: (node id, input) pairs the row set, whose
    CSV text is converted in place to the input's type first."""
    problems = []
    for node_id, node in graph.items():
        kind = node.get("class_type")
        info = object_info.get(kind)
        if info is None:
            problems.append(f"node {node_id}: class '{kind}' is not installed on the server")
            continue
        inputs = node.get("inputs", {})
        for name in info.get("input", {}).get("required", {}):
            if name not in inputs:
                problems.append(f"node {node_id} ({kind}): required input '{name}' is missing")
        for name, value in list(inputs.items()):
            spec = _spec(info, name)
            if spec is None:
                if (node_id, name) in overridden:
                    known = [n for s in ("required", "optional") for n in info.get("input", {}).get(s, {})]
                    problems.append(f"node {node_id} ({kind}): no input '{name}' (it has: {', '.join(known)})")
                continue  # ComfyUI ignores extra inputs the workflow carries
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                source = graph.get(str(value[0]))
                if source is None:
                    problems.append(f"node {node_id} ({kind}).{name}: links to missing node {value[0]}")
                elif source.get("class_type") in object_info and value[1] >= len(object_info[source["class_type"]].get("output", [])):
                    problems.append(f"node {node_id} ({kind}).{name}: links to output {value[1]} of {source['class_type']}, which has fewer")
                continue
            if (node_id, name) in overridden:
                try:
                    value = inputs[name] = convert(value, spec)
                except ValueError as exc:
                    problems.append(f"node {node_id} ({kind}).{name}: {exc}")
                    continue
            problem = check_value(value, spec)
            if problem:
                problems.append(f"node {node_id} ({kind}).{name}: {problem}")
    return problems
