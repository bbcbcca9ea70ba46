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
