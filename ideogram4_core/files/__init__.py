"""Reading model files: bounded safetensors, layout detection, DiT / text-encoder / VAE loading, errors."""
