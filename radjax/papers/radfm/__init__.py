"""RadFM: 3D ViT + perceiver resampler + LLaMA over interleaved 2D/3D images and text.
See README.md."""
