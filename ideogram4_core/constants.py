"""Fixed facts of the Ideogram 4 model (spec §A.3, §A.8, §C.2, §E.3). One place for each."""

# Per-token roles in the packed sequence (`indicator`); anything else is padding.
LLM_TOKEN_INDICATOR = 3
OUTPUT_IMAGE_INDICATOR = 2
PADDING_INDICATOR = 0
# Segment id given to padding rows: they attend only to each other.
SEQUENCE_PADDING_SEGMENT = -1
IMAGE_SEGMENT = 1

# Image grid positions start here so they never collide with text positions (spec §A.4).
IMAGE_POSITION_OFFSET = 65536

# Latent geometry: Flux.2 VAE downsamples by 8, then 2x2 patches -> 128-channel tokens at /16.
VAE_CHANNELS = 32
PATCH_SIZE = 2
LATENT_CHANNELS = VAE_CHANNELS * PATCH_SIZE * PATCH_SIZE
PIXELS_PER_TOKEN = 16

# Qwen3-VL decoder layers whose outputs are interleaved into the 53248 text features (spec §C.2).
TEXT_ENCODER_TAP_LAYERS = (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 35)
MAX_TEXT_TOKENS = 2048

# Supported output sizes (spec §E.3).
MIN_SIDE = 256
MAX_SIDE = 2048
SIZE_MULTIPLE = 16
MAX_ASPECT_RATIO = 6.0
