"""Text: the offline Qwen3-VL tokenizer and the 13-tap text encoder."""
