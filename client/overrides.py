"""Which node input a table column sets, and a row applied to a copy of the API workflow.

Columns: ``job`` (the job's name; default: its row number), shortcuts (``prompt``, ``negative``,
``seed``, ``width``, ``height``, ``steps``, ``cfg``, ``lora_strength``, ``batch_size``) that find their
node by its class, and ``<node>.<input>`` for anything else, where ``<node>`` is a node id, its title
(``_meta.title``) or its class name when only one node has it."""

from __future__ import annotations

import copy

SAMPLERS = ("ZImageTurboSampler", "ZImageTwoStepSampler", "ZImageTwinFlowSampler", "ZImagePromptListGenerate", "KSampler", "KSamplerAdvanced")
TEXT_NODES = ("CLIPTextEncode",)
LATENTS = ("ZImageEmptyLatent", "EmptySD3LatentImage", "EmptyLatentImage", "ZImagePromptListGenerate")
LORAS = {"ZImageLoraLoader": ("strength",), "LoraLoader": ("strength_model",), "LoraLoaderModelOnly": ("strength_model",),
         "ZImageLoraStack": ("strength_1", "strength_2", "strength_3", "strength_4")}
RESERVED = ("job", "_line")


class OverrideError(ValueError):
    pass


def _linked_node(workflow: dict, value):
    if isinstance(value, list) and len(value) == 2 and str(value[0]) in workflow:
        return str(value[0])
    return None


def _text_node(workflow: dict, sampler_id: str, which: str) -> list[tuple[str, str]]:
    """The text input feeding a sampler's ``positive`` / ``negative`` (the prompt list's text for its generator)."""
    inputs = workflow[sampler_id]["inputs"]
    source = _linked_node(workflow, inputs.get(which if which in inputs else {"positive": "prompt"}.get(which, which)))
    if source is None:
        return []
    node = workflow[source]
    if node["class_type"] in TEXT_NODES and isinstance(node["inputs"].get("text"), str):
        return [(source, "text")]
    if node["class_type"] == "ZImagePromptList":
        return [(source, "prompts" if which == "positive" else "negative")]
    return []


def targets(workflow: dict, column: str) -> list[tuple[str, str]]:
    """The (node id, input name) pairs a column sets; an OverrideError says why there are none."""
    samplers = [k for k, n in workflow.items() if n["class_type"] in SAMPLERS]
    by_class = lambda kinds: [k for k, n in workflow.items() if n["class_type"] in kinds]  # noqa: E731
    if column in ("prompt", "negative"):
        found = [t for s in samplers for t in _text_node(workflow, s, "positive" if column == "prompt" else "negative")]
    elif column == "seed":
        found = [(k, name) for k in samplers + by_class(("ZImagePromptList",)) for name in ("seed", "noise_seed")
                 if name in workflow[k]["inputs"] and not isinstance(workflow[k]["inputs"][name], list)]
    elif column in ("width", "height", "batch_size"):
        found = [(k, column) for k in by_class(LATENTS) if column in workflow[k]["inputs"]]
    elif column in ("steps", "cfg"):
        found = [(k, column) for k in samplers if column in workflow[k]["inputs"]]
    elif column == "lora_strength":
        found = [(k, name) for k in by_class(tuple(LORAS)) for name in LORAS[workflow[k]["class_type"]] if name in workflow[k]["inputs"]]
    elif "." in column:
        node_ref, name = column.rsplit(".", 1)
        found = [(k, name) for k in _nodes_named(workflow, node_ref)]
        if not found:
            raise OverrideError(f"column '{column}': no node '{node_ref}' in the workflow (use a node id, its title or a class that occurs once)")
        return found
    else:
        raise OverrideError(f"column '{column}': unknown; use prompt, negative, seed, width, height, steps, cfg, lora_strength, "
                            "batch_size, job, or <node id or title>.<input name>")
    if not found:
        raise OverrideError(f"column '{column}': the workflow has no node it applies to; name the input as <node id>.<input name>")
    return found


def _nodes_named(workflow: dict, ref: str) -> list[str]:
    if ref in workflow:
        return [ref]
    titled = [k for k, n in workflow.items() if n.get("_meta", {}).get("title") == ref]
    if titled:
        return titled
    classed = [k for k, n in workflow.items() if n["class_type"] == ref]
    return classed if len(classed) == 1 else []


def apply_row(workflow: dict, row: dict) -> tuple[dict, list[tuple[str, str, str, object]]]:
    """(a copy of the workflow with the row's values, [(column, node id, input, value)]).
    Values are taken as they are; the validator converts CSV text to the input's type."""
    graph = copy.deepcopy(workflow)
    applied = []
    for column, value in row.items():
        if column in RESERVED or column.startswith("#"):
            continue
        for node_id, name in targets(workflow, column):
            graph[node_id]["inputs"][name] = value
            applied.append((column, node_id, name, value))
    return graph, applied
