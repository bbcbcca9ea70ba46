"""The memory estimate made before every run, held against traced peaks, and the refusal of a run
that cannot fit (16384² on this machine) before anything is allocated."""

import resource

import pytest
import torch

from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders import residency
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.transformer import ZImageTransformer
from zimage_pack.samplers import memory_budget as mb

THIN = dict(dim=3840, n_layers=2, n_refiner_layers=1, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, axes_dims=[32, 48, 48])
GPU = torch.device("cuda", 0)


def _traced(size: int, batch: int = 1):
    """(module holding fake weights, weights bytes, traced peak) of one forward of a thin real-width
    transformer in bf16 at ``size``², 512 caption tokens, under FakeTensorMode + MemTracker."""
    from diffusers import ZImageTransformer2DModel
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    with FakeTensorMode():
        torch.set_default_dtype(torch.bfloat16)
        try:
            module = ZImageTransformer2DModel(**THIN)
        finally:
            torch.set_default_dtype(torch.float32)
        weights = residency.module_bytes(module)
        tracker = MemTracker()
        tracker.track_external(module)
        latent = size // 8
        with tracker, torch.no_grad():
            module([torch.randn(16, 1, latent, latent, dtype=torch.bfloat16) for _ in range(batch)], torch.tensor([0.5] * batch),
                   [torch.randn(512, 2560, dtype=torch.bfloat16) for _ in range(batch)], return_dict=False)
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))["Total"]
    return module, weights, peak


@pytest.mark.parametrize("size,batch", [(256, 1), (512, 2), (1024, 1)])
def test_estimate_is_within_its_margin_of_the_traced_peak(size, batch):
    module, weights, peak = _traced(size, batch)
    model = ZImageTransformer(module, torch.bfloat16, torch.bfloat16, "thin")
    latent = size // 8
    full = mb.sampling_bytes(model, batch, latent, latent, cfg=False, mode="full", device=GPU)
    latents = 4 * batch * 16 * latent * latent * 4
    assert peak + latents <= full <= 1.2 * (peak + latents)  # never below the trace, at most 20 % above (10 % safety + rounding)
    # block offload: the trace's activations + what stays on the card + two blocks (the running and the prefetched one)
    blocks = [b for n in ("layers", "noise_refiner", "context_refiner") for b in getattr(module, n)]
    resident = weights - sum(residency.module_bytes(b) for b in blocks)
    offload_peak = peak - weights + resident + 2 * residency.block_bytes(module) + latents
    block = mb.sampling_bytes(model, batch, latent, latent, cfg=False, mode="block_offload", device=GPU)
    assert offload_peak <= block <= 1.2 * offload_peak
    assert block < full


def _real_size(memory_mode="auto"):
    from diffusers import ZImageTransformer2DModel

    with torch.device("meta"):
        torch.set_default_dtype(torch.bfloat16)
        try:
            module = ZImageTransformer2DModel()  # the real 6.15 B model, sizes only
        finally:
            torch.set_default_dtype(torch.float32)
    return ZImageTransformer(module, torch.bfloat16, torch.bfloat16, "real", memory_mode=memory_mode)


def test_16384_square_is_refused_before_any_allocation():
    """The size that killed ComfyUI on a CPU (12 GB in 15 s, then the kernel's OOM killer) is refused
    at once, by this machine's real available memory."""
    model = _real_size()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    available = mb.host_available()
    assert available is not None and available < 200 * 2**30  # this machine cannot hold the run
    with pytest.raises(ZImageInputError) as err:
        mb.check_sampling_fits(model, 1, 2048, 2048, False, torch.device("cpu"))
    message = str(err.value)
    assert "16384×16384" in message and "fits" in message and "GiB" in message and "latent_image" in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing big was allocated
    mb.check_sampling_fits(model, 1, 128, 128, False, torch.device("cpu"))  # 1024² runs


def test_the_sampler_node_refuses_before_moving_or_allocating(model_files, monkeypatch):
    from zimage_pack.loaders.transformer import load_transformer
    from zimage_pack.nodes.sampling_nodes import ZImageTurboSampler

    model = load_transformer(model_files["comfy"])
    monkeypatch.setattr(mb, "host_available", lambda: 1 << 20)  # a machine with 1 MiB free
    monkeypatch.setattr(residency, "place_transformer", lambda *a, **k: pytest.fail("the model was moved before the check"))
    with pytest.raises(ZImageInputError, match="latent_image"):
        ZImageTurboSampler().run(model, [[torch.randn(1, 4, 32), {}]], {"samples": torch.zeros(1, 16, 64, 64)}, seed=1, steps=1)


def test_refusal_names_the_largest_size_and_the_offload_mode_on_a_small_card(monkeypatch):
    model = _real_size("full")
    monkeypatch.setattr(mb, "capacity", lambda device: 8 * 2**30)  # an 8 GB card
    with pytest.raises(ZImageInputError) as err:
        mb.check_sampling_fits(model, 1, 128, 128, False, GPU)
    assert "block_offload" in str(err.value)
    auto = _real_size("auto")
    mb.check_sampling_fits(auto, 1, 128, 128, False, GPU)  # auto offloads by itself: 1024² runs on 8 GB
    with pytest.raises(ZImageInputError) as err:
        mb.check_sampling_fits(auto, 4, 512, 512, True, GPU)  # 4096² × 4 with CFG: no
    assert "fits" in str(err.value) and "batch" in str(err.value)


def test_vae_refusal_suggests_a_tile_size(monkeypatch):
    vae = type("V", (), {"dtype": torch.float32, "model": dm.make_vae(seed=0)})()
    monkeypatch.setattr(mb, "capacity", lambda device: 4 * 2**30)
    with pytest.raises(ZImageInputError) as err:
        mb.check_vae_fits(vae, 4096, 4096, 1, 0, True, GPU)
    assert "tile_size" in str(err.value)
    mb.check_vae_fits(vae, 4096, 4096, 1, 512, True, GPU)  # tiled: fits
