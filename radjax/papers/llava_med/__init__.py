"""LLaVA-Med (Li et al. 2023): CLIP ViT-L/14 + projector + LLaMA / Mistral, two-stage training
(spec mllm.md §3; the released code of microsoft/LLaVA-Med v1.0 b9a98a7 and v1.5 d406e3f).

The paper contract: ``model`` (build_model, loss_fn, predict_fn, evaluate, pretrained_params),
``data`` (conversation JSON and VQA ``test.json`` on the contract), ``phantoms``, ``convert``
(checkpoint key names), ``demo``; the original's text procedure in ``conversation`` and
``conversations_json``, its VQA metrics in ``metrics``. README.md says what follows the code."""
