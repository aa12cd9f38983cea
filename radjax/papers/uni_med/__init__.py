"""Uni-Med: a Connector-MoE between the vision encoder and the LLM (spec mllm.md §4).

So far the package holds only the paper's evaluation protocol (``metrics``); its model,
data format and demo come with its issue."""
