"""Inside ComfyUI: the state-dict keys of our MODEL, what ComfyUI's LoRA key map makes of them, and
what native LoraLoaderModelOnly (comfy.sd.load_lora_for_models) does with a LoRA file on each
weight kind. Run by tests/test_lora_model_keys.py through comfy_inprocess.run_in_comfy."""

import comfy.lora
import comfy.sd
import comfy.utils
import torch

load_transformer = pack.ideogram4_core.files.checkpoint.load_transformer  # noqa: F821  (from the runner)
comfy_model = pack.nodes.comfy_model  # noqa: F821
lora = comfy.utils.load_torch_file(args["lora"], safe_load=True)  # noqa: F821

result = {}
for quantization in args["quantizations"]:  # noqa: F821
    dit = load_transformer(args["model"], quantization=quantization, compute_dtype=torch.float32)  # noqa: F821
    patcher = comfy_model.wrap_dit(dit)
    model_sd, dit_sd = patcher.model.state_dict(), dit.state_dict()
    case = result[quantization] = {
        "model_keys": sorted(model_sd),
        "dit_keys": sorted(dit_sd),
        # The very same Parameter objects (NF4's state-dict statistics are rebuilt on every call).
        "same_storage": all(dict(patcher.model.named_parameters())["diffusion_model." + k] is t
                            for k, t in dit.named_parameters()),
        "unwrap_is_dit": comfy_model.unwrap_dit(patcher) is dit,
        "parameter_count": sum(1 for _ in patcher.model.parameters()),
        "dit_parameter_count": sum(1 for _ in dit.parameters()),
        "patcher_size": patcher.model_size(),
        "dit_bytes": pack.ideogram4_core.memory.weight_bytes(dit),  # noqa: F821
        "key_map": {k: v if isinstance(v, str) else [v[0], list(v[1])]
                    for k, v in comfy.lora.model_lora_keys_unet(patcher.model, {}).items()},
    }
    try:
        patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)
        case["native_patched_keys"] = sorted(patched.patches)
    except ValueError as err:
        case["native_error"] = str(err)
