"""Diffusion engines on diffusers: Qwen-Image (3 stages), Qwen-Image-Edit, Z-Image, LongCat-Image, Wan, Stable Audio."""
