"""Image editing around the sampler: image-to-image, inpainting and outpainting (issue 13).

Pixel-side work lives here; the latent side (denoise, the per-step mask blend) is in
`sampling.schedule` and `sampling.init_image`, and VAE encoding in `vae.encode_images`.
- `images`: images to a supported size (refuse / resize / crop), alpha and grey channels, resizing;
- `masks`: ComfyUI MASK checks, grow, feather, and the per-token mask the sampler uses;
- `crop`: the crop around a mask at a good sampling size, and stitching the result back;
- `outpaint`: padding an image with the new area as the mask.
Images are ComfyUI IMAGE tensors (B, H, W, C) float in [0, 1]; masks are (B, H, W) in [0, 1],
1 = regenerate (ComfyUI's convention: Load Image's mask is 1 where the picture is transparent).
Semantics and measurements: docs/editing.md.
"""
