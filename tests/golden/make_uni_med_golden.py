"""Golden outputs of the ORIGINAL Uni-Med connector (``UniMed.encode_img``), for radjax's parity
tests.

Run by hand (pytest does not collect this file), from the repository root::

    python tests/golden/make_uni_med_golden.py --uni_med_repo /tmp/s3/src \
        --out tests/golden/data

``--uni_med_repo`` is a checkout (or ``git archive``) of MSIIP/Uni-Med at commit
5c902a5fecbd1688cdabeb84e11fcf57eaddfa38; only ``uni_med/models/{uni_med,uni_med_base,
base_model}.py`` and ``uni_med/common/registry.py`` are imported from it. Needs torch and
numpy only (transformers is imported by ``base_model.py`` for ``LlamaTokenizer``, which the
stand-in LLM never calls).

The ORIGINAL ``UniMed.__init__`` builds the model (task tokens, ``moe_layers`` / ``llm_proj``,
router, ``ln_vision``) and the ORIGINAL ``encode_img`` runs it, in f32 (``maybe_autocast`` is a
no-op on CPU) under ``torch.no_grad`` and eval mode, with two stand-ins:

- the EVA ViT-g tower (``create_eva_vit_g``: 1B parameters and the LAVIS download) is an
  identity module with ``num_features = VISION_DIM``: the "image" handed to ``encode_img`` IS
  the tower's output, (B, 1 + 16*16, VISION_DIM) with a CLS row first. The real
  ``ln_vision`` (``base_model.LayerNorm``, eps 1e-5, fresh weight 1 / bias 0, frozen, as in
  the released model) then runs on it, and everything after it is the original code.
- the LLM (``LlamaForCausalLM.from_pretrained`` + ``LlamaTokenizer``): ``encode_img`` reads only
  ``llm_model.config.hidden_size`` (the experts' width), so a parameter-free module with
  ``config.hidden_size = LLM_DIM``; built through the original ``init_llm`` with
  ``sft_type='none'`` (the released config uses LoRA, which only touches the LLM).

Modules that the imported files import but the connector never uses are replaced in
``sys.modules`` by empty stand-ins (they need omegaconf, peft, timm, iopath, torchvision and
transformers-4.30 internals, none of which radjax's environment has): ``omegaconf``, ``peft``,
``uni_med.common.dist_utils``, ``uni_med.common.utils``, ``uni_med.models.eva_vit``,
``uni_med.models.modeling_llama``; the packages ``uni_med`` and ``uni_med.models`` are bare
namespaces over the checkout, so their ``__init__`` (datasets, processors, tasks) does not run.

The task tokens are initialised N(0, 0.02) by the original; here they are re-drawn N(0, 1)
after construction so that the task measurably changes the routing at the test's tolerance.
Everything else keeps the original's torch default initialisation (the Linear biases are
already non-zero).

Cases (one model each; ``router_type`` is a plain attribute the forward reads, so the four
routers of a case share its parameters): ``task_token`` (projection resampling,
``router_task_token``, moe_mlp: soft / hard / constant / sparse), ``token``
(``router_token``: soft / sparse), ``task`` (``router_task``: soft / sparse), ``avgpool`` and
``maxpool`` (``router_task_token``: soft / sparse), ``moe_linear`` (one Linear per expert: soft).
Each runs on the tasks ``vqa`` and ``caption``.

Keys: ``in/vision_out`` (the tower stand-in's output), ``mid/patch_tokens`` (``ln_vision``
output without CLS: the connector's input), ``<case>/sd/<original state-dict key>``,
``<case>/out/<router>/<task>/{inputs_llm, routing_weights}``,
``<case>/mid/<router>/<task>/router_out`` (the router Mlp's output, soft / sparse only),
``meta/{repo, commit, config}`` (config is JSON: the shared sizes and each case's arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch
from torch import nn

UNI_MED_COMMIT = "5c902a5fecbd1688cdabeb84e11fcf57eaddfa38"
REPO = "MSIIP/Uni-Med"

VISION_DIM = 8  # EVA ViT-g: 1408
GRID = 16  # 224 / 14: 16 x 16 patches, as in the released model
LLM_DIM = 16  # Llama-2-7b: 4096
TASK_TOKEN_C = 24  # released: 5632 (= 4 * 1408); a different width here tests the general case
NUM_EXPERTS = 5
SPARSE_TOPK = 2
BATCH = 2
TASKS = ("vqa", "caption")

# case -> (UniMed keyword arguments, routers run)
CASES = {
    "task_token": (
        dict(resample_method="projection", router_method="router_task_token"),
        ("soft", "hard", "constant", "sparse"),
    ),
    "token": (dict(resample_method="projection", router_method="router_token"), ("soft", "sparse")),
    "task": (dict(resample_method="projection", router_method="router_task"), ("soft", "sparse")),
    "avgpool": (dict(resample_method="avgpool", router_method="router_task_token"), ("soft", "sparse")),
    "maxpool": (dict(resample_method="maxpool", router_method="router_task_token"), ("soft", "sparse")),
    "moe_linear": (
        dict(resample_method="projection", router_method="router_task_token", projector_type="moe_linear"),
        ("soft",),
    ),
}  # fmt: skip


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _commit(repo: str) -> str:
    """HEAD of ``repo`` when it is the top of a git work tree, else '' (an extracted
    ``git archive``: the caller records the pin)."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", repo, *argv], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(repo):
            return ""
        return git("rev-parse", "HEAD")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return ""


class TowerStandIn(nn.Module):
    """Stands in for the EVA ViT-g (``create_eva_vit_g``): the identity, so the "image" given
    to ``encode_img`` is the tower's output (B, 1 + N, num_features). Parameter-free."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


class LLMStandIn(nn.Module):
    """Stands in for ``LlamaForCausalLM``: only ``config.hidden_size`` is read by the
    connector. Parameter-free."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.config = types.SimpleNamespace(hidden_size=hidden_size)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls(LLM_DIM)


class _Unused:
    """A name the imported files bind at import time but the connector never calls."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("stand-in of an import that the Uni-Med connector should not use")

    from_pretrained = classmethod(lambda cls, *a, **k: cls())


def _module(name: str, path: str | None = None, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    if path is not None:
        mod.__path__ = [path]
    for key, value in attrs.items():
        setattr(mod, key, value)
    sys.modules[name] = mod
    return mod


def import_uni_med(repo: str):
    """``uni_med.models.uni_med`` from the checkout, with the stand-ins of the docstring."""
    pkg = os.path.join(repo, "uni_med")
    if not os.path.isfile(os.path.join(pkg, "models", "uni_med.py")):
        raise SystemExit(f"{repo}: no uni_med/models/uni_med.py (a MSIIP/Uni-Med checkout?)")
    _module("uni_med", pkg)
    models = _module("uni_med.models", os.path.join(pkg, "models"))
    _module("omegaconf", OmegaConf=_Unused)
    _module(
        "peft",
        LoraConfig=_Unused,
        TaskType=types.SimpleNamespace(CAUSAL_LM="CAUSAL_LM"),
        get_peft_model=_Unused,
        prepare_model_for_kbit_training=_Unused,
    )
    _module("uni_med.common.dist_utils", download_cached_file=_Unused)
    _module("uni_med.common.utils", get_abs_path=_Unused, is_url=_Unused)
    _module(
        "uni_med.models.eva_vit",
        create_eva_vit_g=lambda img_size, drop_path_rate, use_checkpoint, precision: TowerStandIn(
            VISION_DIM
        ),
    )
    _module("uni_med.models.modeling_llama", LlamaForCausalLM=LLMStandIn)
    sys.path.insert(0, repo)
    from uni_med.models import base_model

    # registry.register_model checks the class against ``uni_med.models.BaseModel``, which the
    # package __init__ (not run) would export
    models.BaseModel = base_model.BaseModel
    from uni_med.models import uni_med as uni_med_module

    base_model.LlamaTokenizer = types.SimpleNamespace(
        from_pretrained=lambda *a, **k: types.SimpleNamespace(pad_token=None)
    )
    return uni_med_module


def build(uni_med_module, seed: int, **kwargs) -> nn.Module:
    """The original UniMed with the released connector settings (train_configs/uni_med.yaml)
    at tiny sizes; ``kwargs`` override resample / router / projector choices."""
    torch.manual_seed(seed)
    args = dict(
        vit_model="eva_clip_g",
        img_size=224,
        drop_path_rate=0,
        use_grad_checkpoint=False,
        vit_precision="fp16",
        freeze_vit=True,
        resample_rate=4,
        resample_method="projection",
        projector_type="moe_mlp",
        llm_model_name="llama2",
        llm_model_path="",
        sft_type="none",
        has_moe=True,
        router_method="router_task_token",
        num_experts=NUM_EXPERTS,
        task_token_c=TASK_TOKEN_C,
        router_type="soft",
        sparse_topk=SPARSE_TOPK,
        num_task_tokens=1,
    )
    model = uni_med_module.UniMed(**(args | kwargs))
    with torch.no_grad():
        for param in model.task_tokens.values():
            param.normal_(0.0, 1.0)
    return model.eval()


def run_case(model: nn.Module, vision_out: torch.Tensor, routers) -> dict[str, np.ndarray]:
    """encode_img for every router x task; router Mlp outputs through a forward hook."""
    arrays: dict[str, np.ndarray] = {}
    captured: list[torch.Tensor] = []
    handle = model.router.register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        for router in routers:
            model.router_type = router
            for task in TASKS:
                captured.clear()
                with torch.no_grad():
                    inputs_llm, atts_llm, weights = model.encode_img(vision_out, task)
                assert atts_llm.shape == inputs_llm.shape[:-1] and bool((atts_llm == 1).all())
                arrays[f"out/{router}/{task}/inputs_llm"] = _np(inputs_llm)
                arrays[f"out/{router}/{task}/routing_weights"] = _np(weights)
                if captured:
                    arrays[f"mid/{router}/{task}/router_out"] = _np(captured[-1])
    finally:
        handle.remove()
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uni_med_repo", default="/tmp/s3/src")
    parser.add_argument("--out", default="tests/golden/data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float32)
    uni_med_module = import_uni_med(args.uni_med_repo)

    g = torch.Generator().manual_seed(args.seed)
    # not standardised, so ln_vision's work shows
    vision_out = 2.0 * torch.randn(BATCH, 1 + GRID * GRID, VISION_DIM, generator=g) + 0.5
    arrays = {"in/vision_out": _np(vision_out)}
    for i, (case, (kwargs, routers)) in enumerate(CASES.items()):
        model = build(uni_med_module, args.seed + 1 + i, **kwargs)
        if case == "task_token":
            with torch.no_grad():
                arrays["mid/patch_tokens"] = _np(model.ln_vision(vision_out)[:, 1:])
        arrays |= {f"{case}/sd/{k}": _np(v) for k, v in model.state_dict().items()}
        arrays |= {f"{case}/{k}": v for k, v in run_case(model, vision_out, routers).items()}

    config = dict(
        vision_dim=VISION_DIM,
        grid=GRID,
        llm_dim=LLM_DIM,
        task_token_c=TASK_TOKEN_C,
        num_experts=NUM_EXPERTS,
        sparse_topk=SPARSE_TOPK,
        resample_rate=4,
        batch=BATCH,
        tasks=TASKS,
        original_tasks=("vqa", "refer", "identify", "caption", "cls"),
        cases={case: dict(kwargs=kw, routers=r) for case, (kw, r) in CASES.items()},
        seed=args.seed,
    )
    meta = dict(repo=REPO, commit=_commit(args.uni_med_repo) or UNI_MED_COMMIT)
    arrays |= {f"meta/{k}": np.array(v) for k, v in meta.items()}
    arrays["meta/config"] = np.array(json.dumps(config))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "uni_med_connector.npz")
    np.savez_compressed(path, **arrays)
    print(f"{path}: {len(arrays)} arrays, {os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
