"""Uni-Med: EVA ViT-g -> a Connector-MoE routed per task -> LLaMA-2 with LoRA (spec mllm.md §4).

The paper contract: ``model`` (build_model, loss_fn, predict_fn, evaluate, pretrained_params),
``data`` (SLAKE / MIMIC-CXR / MedMNIST formats), ``phantoms``, ``metrics``, ``demo``; the
connector (``connector``) and its checkpoint converter (``convert``). README.md says what
follows the original code and what does not."""
