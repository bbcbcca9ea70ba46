"""The example workflows, their help pages and the queue tests' /object_info are what workflows/build.py
writes from ComfyUI's own node classes (so they cannot drift from the nodes), and each API workflow passes
ComfyUI's own prompt validation's first step: every node type exists and every link points at an output of
the right type. They run in a real server in tests/test_comfyui_api.py."""

import json
import os

import pytest

from zimage_pack.workflows import build, help_pages
from zimage_pack.workflows.comfy_runtime import node_classes

API_FILES = sorted(os.listdir(build.API_DIR))


def test_committed_workflows_equal_the_generator_output():
    files = build.render()
    assert sorted(n for n in files if n.endswith("_api.json")) == API_FILES
    for name, obj in files.items():
        with open(build.workflow_path(name), encoding="utf-8") as fh:
            assert fh.read() == build.dumps(obj), f"{name} is stale: run bash scripts/build_workflows.sh"


def test_help_pages_and_object_info_are_current():
    from zimage_pack.nodes.extension import NODES

    pages = help_pages.render(NODES, {name: graph() for name, graph in build.WORKFLOWS.items()})
    assert sorted(pages) == sorted(os.listdir(help_pages.DOCS_DIR))
    for name, text in pages.items():
        with open(os.path.join(help_pages.DOCS_DIR, name), encoding="utf-8") as fh:
            assert fh.read() == text, f"web/docs/{name} is stale: run bash scripts/build_workflows.sh"
    with open(build.OBJECT_INFO_PATH, encoding="utf-8") as fh:
        assert fh.read() == build.dumps(build.object_info()), "tests/data/example_object_info.json is stale: run bash scripts/build_workflows.sh"


@pytest.mark.parametrize("name", API_FILES)
def test_links_point_at_outputs_of_the_type_each_input_takes(name):
    classes = node_classes()
    with open(os.path.join(build.API_DIR, name), encoding="utf-8") as fh:
        prompt = json.load(fh)
    for node_id, node in prompt.items():
        cls = classes[node["class_type"]]
        declared = {**cls.INPUT_TYPES().get("required", {}), **cls.INPUT_TYPES().get("optional", {})}
        for input_name, value in node["inputs"].items():
            assert input_name in declared, (name, node_id, input_name)
            if isinstance(value, list):
                source = classes[prompt[value[0]]["class_type"]]
                produced, wanted = source.RETURN_TYPES[value[1]], declared[input_name][0]
                assert produced == wanted or wanted == "*", (name, node_id, input_name, produced, wanted)
        required = cls.INPUT_TYPES().get("required", {})
        assert set(required) <= set(node["inputs"]), (name, node_id, set(required) - set(node["inputs"]))


def test_every_loader_of_a_downloadable_file_says_where_to_download_it():
    missing = []
    for name in os.listdir(build.EXAMPLES_DIR):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(build.EXAMPLES_DIR, name), encoding="utf-8") as fh:
            workflow = json.load(fh)
        for node in workflow["nodes"]:
            named = [v for v in node.get("widgets_values", []) if isinstance(v, str) and v in build.MODEL_DOWNLOADS]
            offered = {m["name"] for m in node["properties"].get("models", [])}
            missing += [(name, node["type"], file) for file in named if file not in offered]
    assert not missing, missing
