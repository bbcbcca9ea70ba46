"""The pack's V3 nodes on native types, called as ComfyUI calls them (``execute`` of the node class): bad
inputs refused by name with the input MODEL untouched, the LoRA nodes as ComfyUI weight patches, the
prompt list's outputs. Whole graphs run in a real server: tests/test_comfyui_api.py."""

import pytest
import torch

from zimage_pack.loaders.demo_loras import write_lora
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.nodes.batch_nodes import ZImagePromptList
from zimage_pack.nodes.extension import NODES
from zimage_pack.nodes.image_nodes import ZImageSaveImage
from zimage_pack.nodes.lora_nodes import ZImageLoraLoader, ZImageLoraStack
from zimage_pack.nodes.native_lora import add_lora
from zimage_pack.nodes.sampling_nodes import ZImageEmptyLatent, ZImageTurboSampler

LATENT = {"samples": torch.zeros(1, 16, 8, 8)}


def _conditioning(size=32, seed=1):
    return [[torch.randn(1, 6, size, generator=torch.Generator().manual_seed(seed)), {}]]


def test_every_node_is_v3_with_a_tooltip_on_every_input_and_output():
    for node in NODES:
        schema = node.GET_SCHEMA()
        assert schema.description and schema.category.startswith("Z-Image") and schema.search_aliases, schema.node_id
        assert all(item.tooltip for item in schema.inputs), [i.id for i in schema.inputs if not i.tooltip]
        assert all(item.tooltip for item in schema.outputs), schema.node_id
    assert len({node.GET_SCHEMA().node_id for node in NODES}) == len(NODES)


def test_width_and_height_are_named_each_on_their_own():
    """ComfyUI shows the one validate_inputs text under every input: it says which one is wrong."""
    message = ZImageEmptyLatent.validate_inputs(100, 1024)
    assert message.startswith("width: found 100") and "height 1024 is fine" in message and "use 96" in message
    message = ZImageEmptyLatent.validate_inputs(1024, 20000)
    assert message.startswith("height: found 20000") and "width 1024 is fine" in message
    assert ZImageEmptyLatent.validate_inputs(1024, 768) is True
    assert ZImageEmptyLatent.execute(64, 48, 2).result[0]["samples"].shape == (2, 16, 6, 8)


@pytest.mark.parametrize("latent, fragment", [({"samples": torch.zeros(1, 4, 8, 8)}, "4 channels"), ({"samples": torch.zeros(1, 16, 5, 8)}, "multiples of 16"),
                                              (torch.zeros(1, 16, 8, 8), "LATENT")])
def test_a_bad_latent_is_refused_by_name(native, latent, fragment):
    with pytest.raises(ZImageInputError) as err:
        ZImageTurboSampler.execute(native, _conditioning(), latent, seed=1, steps=1)
    assert "latent_image" in str(err.value) and fragment in str(err.value)


def test_features_of_another_text_encoder_are_refused_before_the_model_runs(native):
    with pytest.raises(ZImageInputError) as err:
        ZImageTurboSampler.execute(native, _conditioning(768), LATENT, seed=1, steps=1)
    assert "positive" in str(err.value) and "768" in str(err.value) and "Qwen3-4B" in str(err.value)


def test_cfg_without_a_negative_prompt_is_refused(native):
    with pytest.raises(ZImageInputError) as err:
        ZImageTurboSampler.execute(native, _conditioning(), LATENT, seed=1, steps=1, cfg=4.0)
    assert "negative" in str(err.value) and "cfg 4.0" in str(err.value) and "empty text" in str(err.value)


def test_something_that_is_not_a_z_image_model_is_refused_by_name():
    with pytest.raises(ZImageInputError) as err:
        ZImageTurboSampler.execute("not a model", _conditioning(), LATENT, seed=1, steps=1)
    assert "model" in str(err.value) and "Z-Image MODEL" in str(err.value)


def test_the_lora_nodes_give_comfyuis_weight_patches_and_leave_the_input_alone(native, comfy_folders):
    loras = comfy_folders / "models" / "loras"
    write_lora(native.model.diffusion_model, str(loras / "style_musubi.safetensors"), "musubi", seed=1, blocks=("layers", "noise_refiner"))
    write_lora(native.model.diffusion_model, str(loras / "style_peft.safetensors"), "peft", seed=2)
    before = len(native.patches)
    one, report = ZImageLoraLoader.execute(native, "style_musubi.safetensors", 0.7).result
    assert len(native.patches) == before and one is not native and one.model is native.model  # a clone sharing the weights
    assert "NOT applied" not in report and "applied" in report, report  # musubi's raw names, which native LoraLoader drops
    stacked, text = ZImageLoraStack.execute(native, lora_1="style_musubi.safetensors", strength_1=0.7, lora_2="None", strength_2=1.0,
                                            lora_3="style_peft.safetensors", strength_3=-0.5, lora_4="None", strength_4=1.0).result
    chained = add_lora(add_lora(native, str(loras / "style_musubi.safetensors"), 0.7)[0], str(loras / "style_peft.safetensors"), -0.5)[0]
    assert set(stacked.patches) == set(chained.patches)
    for key in chained.patches:
        assert [(p[0], p[2]) for p in stacked.patches[key]] == [(p[0], p[2]) for p in chained.patches[key]]
    assert "style_musubi" in text and "style_peft" in text


def test_a_broken_lora_in_a_stack_patches_nothing(native, comfy_folders):
    loras = comfy_folders / "models" / "loras"
    (loras / "broken.safetensors").write_bytes(b"\x00" * 100)
    write_lora(native.model.diffusion_model, str(loras / "fine.safetensors"), "peft", seed=3)
    before = {k: len(v) for k, v in native.patches.items()}
    with pytest.raises(ZImageInputError, match="broken.safetensors"):
        ZImageLoraStack.execute(native, lora_1="fine.safetensors", strength_1=1.0, lora_2="broken.safetensors", strength_2=1.0,
                                lora_3="None", strength_3=1.0, lora_4="None", strength_4=1.0)
    assert {k: len(v) for k, v in native.patches.items()} == before


def test_the_prompt_list_gives_list_outputs_and_reads_files_of_the_input_folder(comfy_folders):
    (comfy_folders / "input" / "list.csv").write_text("prompt,seed\na fox,7\na yak,\n", encoding="utf-8")
    assert "list.csv" in ZImagePromptList.GET_SCHEMA().inputs[4].options
    prompts, negatives, seeds, count = ZImagePromptList.execute("ignored", 3, "increment", repeat=2, file="list.csv", negative="blurry").result
    assert prompts == ["a fox", "a yak"] * 2 and seeds[0] == 7 and count == 4 and negatives == ["blurry"] * 4
    schema = ZImagePromptList.GET_SCHEMA()
    assert [o.is_output_list for o in schema.outputs] == [True, True, True, False]
    with pytest.raises(ZImageInputError, match="file"):
        ZImagePromptList.execute("", 0, "fixed", file="../outside.txt")


def test_save_image_refuses_a_bad_prefix_at_queue_time():
    verdict = ZImageSaveImage.validate_inputs("../../escape")
    assert isinstance(verdict, str) and "'..' or '.' parts" in verdict
    assert ZImageSaveImage.validate_inputs("people/z-image") is True
