"""The pack's schedule rules against ComfyUI's own code, run in ComfyUI's own Python (an independent
reference: tests/comfyui_reference.py imports comfy.samplers and comfy.model_sampling)."""

import json
import subprocess

import pytest
import torch

from comfyui_harness import comfyui_python, find_comfyui
from zimage_pack.samplers.schedules import percent_to_sigma, turbo_sigmas

pytestmark = pytest.mark.comfyui

STEPS = list(range(1, 31)) + [40, 50]
DENOISE = [0.1, 0.25, 0.3, 0.33, 0.5, 0.6, 0.7, 0.75, 0.85, 0.9, 0.95]
SHIFTS = [3.0, 1.0, 6.0]


@pytest.fixture(scope="module")
def comfyui_numbers():
    request = {"ksampler_sigmas": [[s, d, shift] for s in STEPS for d in DENOISE for shift in SHIFTS],
               "percent_to_sigma": [[p / 40, shift] for p in range(41) for shift in SHIFTS]}
    done = subprocess.run([comfyui_python(), "tests/comfyui_reference.py", str(find_comfyui())], input=json.dumps(request), capture_output=True,
                          text=True, timeout=300, check=True)
    return request, json.loads(done.stdout)


def test_img2img_sigmas_equal_ksamplers_for_every_steps_and_denoise(comfyui_numbers):
    request, answer = comfyui_numbers
    for (steps, denoise, shift), theirs in zip(request["ksampler_sigmas"], answer["ksampler_sigmas"]):
        ours = turbo_sigmas(steps, shift, denoise)
        assert torch.allclose(ours, torch.tensor(theirs), atol=1e-6, rtol=0), (steps, denoise, shift, ours.tolist(), theirs)


def test_percent_to_sigma_equals_comfyuis(comfyui_numbers):
    request, answer = comfyui_numbers
    for (percent, shift), theirs in zip(request["percent_to_sigma"], answer["percent_to_sigma"]):
        assert percent_to_sigma(percent, shift) == pytest.approx(theirs, abs=1e-12), (percent, shift)
