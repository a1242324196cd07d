"""LoRA for the Ideogram 4 transformers: every common file format, turned into one table.

    lora = load_lora(path, linear_shapes(model))   # LoraFile: .layers {original weight key: LoraWeights}
    patches = patch_targets(model, lora.layers)    # the same, keyed by the model's own state-dict keys

- formats.py: which trainer wrote a file (from its keys alone) and how its names map onto ours:
  diffusers/peft, ai-toolkit, kohya (`lora_down`/`lora_up`/`.alpha`, `lora_unet_`), OneTrainer's
  split q/k/v, the `conditional_transformer.` prefix; the clear errors for anything else.
- layers.py: the low-rank update of one layer (`LoraWeights`), the model's LoRA-able linears, and
  the split of a LoRA on a fused qkv across separately stored q/k/v parts.
- file.py: bounded safetensors reading (never a pickle) and peft's adapter metadata.

How a LoRA is applied is the host's business (ComfyUI merges it into float weights and applies it
per call to the dequantised weight of FP8 / NF4 layers: nodes/lora.py, nodes/patcher.py); `merge_`
in layers.py is the host-free equivalent for float models. Tested against diffusers 0.42.1 + peft
(`Ideogram4Pipeline.load_lora_weights`): tests/test_lora_core.py.
"""

from .errors import LoraError, LoraShapeError, NotIdeogram4LoraError, UnsupportedLoraError
from .file import LoraFile, load_lora
from .formats import convert_state_dict
from .layers import LoraWeights, linear_shapes, merge_, patch_targets

__all__ = ["LoraError", "LoraShapeError", "NotIdeogram4LoraError", "UnsupportedLoraError", "LoraFile",
           "load_lora", "convert_state_dict", "LoraWeights", "linear_shapes", "merge_", "patch_targets"]
