"""LLaVA-Med: CLIP ViT + projector + LLM, two-stage training (spec mllm.md §3).

So far the package holds only the paper's evaluation protocol (``metrics``); its model,
data format and demo come with its issue."""
