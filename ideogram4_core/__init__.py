"""Ideogram 4 model, sampler and file formats. Host-free: never imports ComfyUI."""
