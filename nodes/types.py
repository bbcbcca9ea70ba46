"""Socket type names. Our models get their own types so ComfyUI refuses a wrong wire at validation
instead of failing mid-run (a native MODEL into our sampler, ours into KSampler)."""

ZIMAGE_MODEL = "ZIMAGE_MODEL"
ZIMAGE_TEXT_ENCODER = "ZIMAGE_TEXT_ENCODER"
ZIMAGE_VAE = "ZIMAGE_VAE"
CATEGORY = "Z-Image"
ZIMAGE_STEP_MODEL = "ZIMAGE_STEP_MODEL"
ZIMAGE_CONTROLNET = "ZIMAGE_CONTROLNET"
