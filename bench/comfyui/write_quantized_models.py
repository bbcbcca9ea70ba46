"""Write small seeded Z-Image models under the real file names into a ComfyUI models folder, in the
quantised layouts users download (int8 + ConvRot, nvfp4, GGUF Q8_0 transformers; fp8_mixed and GGUF
Qwen3 text encoders), plus bf16 versions, a TwinFlow transformer, a Base file, LoRAs and a VAE: every
example workflow's files.

    python bench/comfyui/write_quantized_models.py /path/to/ComfyUI/models
"""
import sys

import torch

import zimage_pack  # noqa: F401  (pip install -e . first)
from zimage_pack.loaders import demo_models as dm
from zimage_pack.loaders import demo_quantized as dq

M = sys.argv[1]
t = dm.make_transformer(0, dim=256, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=256, axes_dims=[32, 48, 48])
dm.write_transformer(t, f"{M}/diffusion_models/z_image_turbo_bf16.safetensors", "comfy", dtype=torch.bfloat16)
dq.write_quantized_transformer(t, f"{M}/diffusion_models/z_image_turbo_int8_convrot.safetensors", "int8_tensorwise", convrot_groupsize=256)
dq.write_quantized_transformer(t, f"{M}/diffusion_models/z_image_turbo_nvfp4.safetensors", "nvfp4")
dq.write_gguf_transformer(t, f"{M}/diffusion_models/z_image_turbo-Q8_0.gguf", "Q8_0", one_d_pad_tokens=True)
te = dm.make_text_encoder(1, hidden_size=256, intermediate_size=512, head_dim=64, num_attention_heads=4, num_key_value_heads=2)
dm.write_text_encoder(te, f"{M}/text_encoders/qwen_3_4b.safetensors")
dq.write_quantized_text_encoder(te, f"{M}/text_encoders/qwen_3_4b_fp8_mixed.safetensors", "float8_e4m3fn")
dq.write_gguf_text_encoder(te, f"{M}/text_encoders/Qwen3-4B-Q8_0.gguf", "Q8_0")
dm.write_vae(dm.make_vae(2), f"{M}/vae/ae.safetensors")
from safetensors.torch import save_file  # noqa: E402

from zimage_pack.loaders.demo_loras import write_lora  # noqa: E402
from zimage_pack.workflows import build  # noqa: E402

twin = dm.make_twinflow_transformer(3, dim=256, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=256, axes_dims=[32, 48, 48])
save_file(dm.diffusers_to_comfy_transformer_keys({k: v.contiguous() for k, v in twin.state_dict().items()}), f"{M}/diffusion_models/{build.TWINFLOW_FILE}")
dm.write_transformer(t, f"{M}/diffusion_models/{build.BASE_FILE}", "comfy", dtype=torch.bfloat16)
import os  # noqa: E402

os.makedirs(f"{M}/loras", exist_ok=True)
write_lora(t, f"{M}/loras/{build.LORA_FILE}", "musubi")
write_lora(t, f"{M}/loras/{build.DISTILL_LORA_FILE}", "peft")
print("written under", M)
