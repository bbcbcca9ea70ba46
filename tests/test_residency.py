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


# ------------------------------------------------------------------ offloading re-armed after a weight change


def _stream_like_host_copies(monkeypatch):
    """What CUDA streams change in diffusers' group offloading, as far as the weights go, brought to
    the CPU (where diffusers refuses streams): each group copies its tensors when offloading is
    applied (the pinned host copies) and onloads / offloads those copies, not the parameters'
    current tensors. A weight the pack replaces afterwards is then invisible until offloading is
    applied again."""
    from diffusers.hooks import group_offloading as go

    original_init = go.ModuleGroup.__init__

    def tensors(group):
        found = [t for m in group.modules for t in list(m.parameters()) + list(m.buffers())]
        return found + list(group.parameters) + list(group.buffers)

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.host_copies = {t: t.data.clone() for t in tensors(self)}

    def from_copies(self):
        for tensor, copy in self.host_copies.items():
            tensor.data = copy.to(self.onload_device)  # the stream path: param.data = pinned.to(device)

    def to_copies(self):
        for tensor, copy in self.host_copies.items():
            tensor.data = copy  # the stream path: param.data = cpu_param_dict[param]

    monkeypatch.setattr(go.ModuleGroup, "__init__", init)
    monkeypatch.setattr(go.ModuleGroup, "onload_", from_copies)
    monkeypatch.setattr(go.ModuleGroup, "offload_", to_copies)


def _lora_and_two_step(tmp_path):
    """A LoRA on step 1 and a second transformer's tensors for step 2 (one shared module), as the
    2-step sampler runs them, and the to_q weight of layer 0 each step must compute with."""
    from zimage_pack.loaders import demo_loras
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders.lora_merge import prepare_lora
    from zimage_pack.loaders.step_decoupled import from_models
    from zimage_pack.loaders.transformer import ZImageTransformer

    base = ZImageTransformer(dm.make_transformer(seed=0), torch.float32, torch.float32, "step1.safetensors")
    other = ZImageTransformer(dm.make_transformer(seed=5), torch.float32, torch.float32, "step2.safetensors")
    delta = demo_loras.write_lora(base.module, str(tmp_path / "lora.safetensors"), "ai-toolkit")
    step1 = base.with_lora(prepare_lora(base.module, str(tmp_path / "lora.safetensors"), 1.0)[0])
    name = "layers.0.attention.to_q.weight"
    wanted = [base.module.get_parameter(name).detach().clone() + delta[name], other.module.get_parameter(name).detach().clone()]
    return from_models(step1, other), wanted


def _run_recording_to_q(model, features, latent):
    from zimage_pack.loaders.step_decoupled import StepSettings
    from zimage_pack.samplers.two_step import sample_two_step

    seen = []
    layer = model.module.layers[0].attention.to_q
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(m.weight.detach().clone()))
    try:
        final, _ = sample_two_step(model, features, latent, 3, StepSettings())
    finally:
        handle.remove()
    return final, seen


def _rearms(monkeypatch):
    from diffusers.hooks import group_offloading as go

    calls = []
    original = go._maybe_remove_and_reapply_group_offloading
    monkeypatch.setattr(go, "_maybe_remove_and_reapply_group_offloading", lambda m: calls.append(1) or original(m))
    return calls


def test_block_offload_is_rearmed_after_a_lora_and_a_parameter_swap(monkeypatch, tmp_path):
    """What this shows on the CPU: whenever a LoRA merge or a per-step swap changes the weights, the
    pack applies diffusers' group offloading again (and only then), and each step's layers compute
    with that step's weights, equal to a run without offloading, even when groups onload host copies
    taken when offloading was applied, as they do with CUDA streams (emulated above). What it cannot
    show: real streams, pinned memory and their timing; bench/gpu_offload_rearm.py checks those on a GPU."""
    from zimage_pack.loaders.residency import apply_offloading, remove_offloading

    _stream_like_host_copies(monkeypatch)
    rearms = _rearms(monkeypatch)
    model, wanted = _lora_and_two_step(tmp_path)
    features, latent = [torch.randn(5, 32, generator=torch.Generator().manual_seed(0))], torch.zeros(1, 16, 8, 8)
    want, seen = _run_recording_to_q(model, features, latent)
    assert len(seen) == 2 and torch.equal(seen[0], wanted[0]) and torch.equal(seen[1], wanted[1])
    assert rearms == []  # not offloaded: nothing to re-arm

    apply_offloading(model.module, "block_offload", torch.device("cpu"))
    try:
        got, seen = _run_recording_to_q(model, features, latent)
        assert len(rearms) == 2  # step 1 back to the file's tensors + LoRA, then step 2's tensors
        assert torch.equal(seen[0], wanted[0]) and torch.equal(seen[1], wanted[1])
        assert torch.equal(got, want)
        from zimage_pack.loaders.param_sets import prepare_weights

        prepare_weights(model.steps[1])  # already step 2's weights: no re-arm (it re-pins host copies)
        assert len(rearms) == 2
    finally:
        remove_offloading(model.module)


def test_without_the_rearm_the_stream_like_groups_compute_with_stale_weights(monkeypatch, tmp_path):
    """The emulation above can fail: with the re-arm taken out, step 1 computes with the tensors the
    groups copied when offloading was applied (step 2's, where the previous run ended)."""
    from zimage_pack.loaders import param_sets
    from zimage_pack.loaders.residency import apply_offloading, remove_offloading

    _stream_like_host_copies(monkeypatch)
    model, wanted = _lora_and_two_step(tmp_path)
    features, latent = [torch.randn(5, 32, generator=torch.Generator().manual_seed(0))], torch.zeros(1, 16, 8, 8)
    want, _ = _run_recording_to_q(model, features, latent)
    monkeypatch.setattr(param_sets, "weights_changed", lambda module: None)
    apply_offloading(model.module, "block_offload", torch.device("cpu"))
    try:
        got, seen = _run_recording_to_q(model, features, latent)
    finally:
        remove_offloading(model.module)
    assert not torch.equal(seen[0], wanted[0]) and not torch.equal(got, want)


def test_an_offloaded_transformer_takes_its_inputs_on_the_onload_device():
    """Under block offloading on a GPU the weights wait on the CPU between calls (so the module's own
    tensors say "cpu"); the samplers must still put the latent where the blocks compute, or the
    first Euler step would add a CPU latent to a GPU velocity. Only the recorded placement is faked
    here (what apply_offloading records on a GPU); bench/gpu_offload_rearm.py runs it on one."""
    from zimage_pack.loaders import demo_models as dm
    from zimage_pack.loaders.transformer import ZImageTransformer

    model = ZImageTransformer(dm.make_transformer(seed=0), torch.float32, torch.float32, "t")
    assert model.device.type == "cpu"
    state = residency._placement(model.module)
    state.mode, state.device = "block_offload", GPU
    assert model.device == GPU and model.module.x_pad_token.device.type == "cpu"
    state.mode, state.device = "full", None
    assert model.device.type == "cpu"
