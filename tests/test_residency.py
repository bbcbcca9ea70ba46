"""Models take turns on the GPU: when room is short, the pack's other models go back to the CPU
first, then the host (ComfyUI) is asked to free memory. Simulated: no GPU is needed."""

import torch

from zimage_pack.loaders import residency

GPU = torch.device("cuda", 0)


class FakeModule(torch.nn.Module):
    """Records moves instead of doing them."""

    def __init__(self, nbytes):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(nbytes // 4))
        self.where = torch.device("cpu")
        self.moves = []

    def to(self, device):
        self.where = torch.device(device)
        self.moves.append(self.where.type)
        return self


def test_models_take_turns_when_room_is_short(monkeypatch):
    monkeypatch.setattr(residency, "device_of", lambda m: m.where)
    monkeypatch.setattr(residency, "_free_bytes", lambda device: 0)  # a full card
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    asked = []
    transformer, encoder = FakeModule(4000), FakeModule(2000)
    residency.place(encoder, GPU, lambda need, dev: asked.append(need))
    residency.place(transformer, GPU, lambda need, dev: asked.append(need))
    assert encoder.moves == ["cuda", "cpu"] and transformer.moves == ["cuda"]
    assert asked == [2000 + residency._RESERVE, 4000 + residency._RESERVE]
    # second queued prompt: the encoder comes back, the transformer steps aside
    residency.place(encoder, GPU)
    assert transformer.moves == ["cuda", "cpu"] and encoder.where.type == "cuda"
    residency.offload_all()
    assert encoder.where.type == "cpu"


def test_nothing_moves_when_there_is_room(monkeypatch):
    monkeypatch.setattr(residency, "device_of", lambda m: m.where)
    monkeypatch.setattr(residency, "_free_bytes", lambda device: 1 << 40)
    a, b = FakeModule(400), FakeModule(400)
    residency.place(a, GPU)
    residency.place(b, GPU)
    residency.place(a, GPU)  # already there: no transfer
    assert a.moves == ["cuda"] and b.moves == ["cuda"]
    residency.offload_all()


def test_cpu_device_is_a_no_op_for_cpu_models():
    module = torch.nn.Linear(2, 2)
    assert residency.place(module, torch.device("cpu")) is module
    assert residency.pick_device().type in ("cpu", "cuda", "mps")


def test_fp8_on_apple_mps_is_refused_clearly(monkeypatch):
    import pytest

    from zimage_pack.loaders.errors import ZImageInputError

    module = torch.nn.Linear(4, 4).to(torch.float8_e4m3fn)
    with pytest.raises(ZImageInputError) as info:
        residency.place(module, torch.device("mps"))
    assert "bf16" in str(info.value) and module.weight.device.type == "cpu"


def _real_size_transformer():
    """The real 6.15 B transformer in bf16 on the meta device: sizes without memory."""
    from diffusers import ZImageTransformer2DModel

    with torch.device("meta"):
        torch.set_default_dtype(torch.bfloat16)
        try:
            return ZImageTransformer2DModel()
        finally:
            torch.set_default_dtype(torch.float32)


def test_auto_mode_runs_the_bf16_file_on_8_and_12_gb_cards_and_keeps_it_whole_on_24():
    GiB = 1 << 30
    model = _real_size_transformer()
    assert 11 * GiB < residency.module_bytes(model) < 12 * GiB
    act = residency.transformer_activation_bytes(model, 1, 128, 128)  # 1024², batch 1
    assert 0.3 * GiB < act < 1.0 * GiB  # the traced activation peak is 0.52 GiB (bench/quantized_memory.py)
    assert residency.choose_mode(model, 24 * GiB, act) == "full"
    assert residency.choose_mode(model, int(7.5 * GiB), act) == "block_offload"  # an 8 GB card, less the desktop
    assert residency.choose_mode(model, int(11.5 * GiB), act) == "block_offload"  # 12 GB: the whole model does not fit
    assert residency.choose_mode(model, int(1.5 * GiB), act) == "leaf_offload"
    assert residency.choose_mode(model, None, act) == "full"  # the CPU: nothing to offload to
    # block offload needs: the resident parts + two blocks + activations + reserve, well under 8 GB
    blocks = residency.block_bytes(model)
    assert 2 * blocks + act + GiB < 3 * GiB


def test_auto_keeps_an_fp8_sized_model_whole_on_an_8_gb_card():
    GiB = 1 << 30
    model = _real_size_transformer()
    for name, param in model.named_parameters():  # the blocks' Linear weights in fp8, as fp8 / int8 repacks hold them
        if param.ndim == 2 and name.startswith(("layers.", "noise_refiner.", "context_refiner.")):
            param.data = param.data.to(torch.float8_e4m3fn)
    assert residency.module_bytes(model) < 6 * GiB
    act = residency.transformer_activation_bytes(model, 1, 128, 128)
    assert residency.choose_mode(model, int(7.5 * GiB), act) == "full"


def test_auto_counts_the_memory_other_models_could_give_back(monkeypatch):
    """A 16 GB card with the text encoder still on it: the transformer runs whole (the encoder is
    moved off), not offloaded block by block."""
    GiB = 1 << 30
    model = _real_size_transformer()
    encoder = torch.nn.Linear(1, 1, bias=False)
    encoder.weight = torch.nn.Parameter(torch.empty(2 * GiB, device="meta"))  # 8 GiB in float32, sizes only
    monkeypatch.setattr(residency, "_free_bytes", lambda device: 7 * GiB)  # 16 GB card: 8 GiB encoder + desktop
    monkeypatch.setattr(residency, "device_of", lambda m: GPU if m is encoder else torch.device("cpu"))
    monkeypatch.setitem(residency._resident, id(encoder), encoder)
    act = residency.transformer_activation_bytes(model, 1, 128, 128)
    room = residency.room_for(model, GPU)
    assert room == 15 * GiB and residency.choose_mode(model, room, act) == "full"
    assert residency.room_for(model, GPU, keep=(encoder,)) == 7 * GiB  # what the same run keeps stays
