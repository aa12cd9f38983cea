"""M3D-LaMed / M3D-CLIP: 3D ViT + spatial pooling + LLM (spec mllm.md §2).

So far the package holds only the paper's evaluation protocol (``metrics``); its model,
data format and demo come with its issue."""
