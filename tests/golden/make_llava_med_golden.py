"""Golden token ids and labels of the ORIGINAL LLaVA-Med conversation preprocessing.

Run by hand (pytest does not collect this file), once per part, each part in an environment
with the versions its code pins (tests/golden/README.md); each run replaces its part of the
output file and keeps the other::

    # v1.0: microsoft/LLaVA-Med b9a98a7 (llava/train/train.py + llava/conversation.py)
    python3 -m venv /tmp/llava_med_env10
    /tmp/llava_med_env10/bin/pip install transformers==4.28.1 sentencepiece==0.1.99 \
        tokenizers==0.13.3 pillow torch==2.13.0
    /tmp/llava_med_env10/bin/python tests/golden/make_llava_med_golden.py --part v1.0 \
        --src /tmp/lm_src/v10 --sp_model SP --out tests/golden/data/llava_med_conversation.json

    # v1.5: microsoft/LLaVA-Med d406e3f (llava/conversation.py, llava/mm_utils.py) with the
    # training preprocessing of haotian-liu/LLaVA c121f04 (llava/train/train.py)
    python3 -m venv /tmp/llava_med_env15
    /tmp/llava_med_env15/bin/pip install transformers==4.36.2 "tokenizers>=0.15,<0.16" \
        sentencepiece==0.1.99 pillow torch==2.13.0
    /tmp/llava_med_env15/bin/python tests/golden/make_llava_med_golden.py --part v1.5 \
        --src /tmp/lm_src/v15 --upstream /tmp/lm_src/llava --sp_model SP \
        --out tests/golden/data/llava_med_conversation.json

``SP``: a LLaMA-format SentencePiece model, mistral-common's
``mistral_common/data/tokenizer.model.v1`` (Mistral-7B's 32000-piece tokenizer; LLaMA-1's is
not shipped anywhere we can install). ``--src`` holds ``llava/`` of LLaVA-Med at the commit
(``git archive <commit> llava | tar -x -C DIR``); ``--upstream`` holds ``llava/`` of
haotian-liu/LLaVA.

v1.0: the tokenizer is set up exactly as ``train.train()`` does (slow ``LlamaTokenizer``,
``model_max_length``, right padding; ``[PAD]`` through ``smart_tokenizer_and_embedding_resize``
when the tokenizer has no pad token (``--version v0``); bos / eos / unk replaced when
``"llama"`` is in the model path; ``LlavaLlamaForCausalLM.initialize_vision_tokenizer`` with
``mm_use_im_start_end``), on a tiny ``LlavaLlamaForCausalLM`` (hidden 8, one layer: the
embedding rows that get mean-initialised are recorded). Three tokenizer folders: a raw LLaMA
folder (``LlamaTokenizer(vocab_file=SP).save_pretrained``) at a path without ``"llama"``, the
same at a path with it (the BOS quirk), and the first one after its set-up saved with
``save_pretrained`` and set up again (a LLaVA-7b-v0-like folder that already holds the four
tokens). Each conversation goes through the ORIGINAL ``LazySupervisedDataset.__getitem__``
(``preprocess_multimodal`` + ``preprocess``; images are small PNGs, ``CLIPImageProcessor()``
defaults) and ``DataCollatorForSupervisedDataset``. Replaced: ``open_clip`` (imported by
``llava/model/llava.py`` for the BiomedCLIP tower, unused) and the CLIP vision tower (only its
``config`` object is touched by ``initialize_vision_tokenizer``).

v1.5: LLaVA-Med v1.5 ships no training code. The reference is upstream LLaVA's
``preprocess_multimodal`` + ``preprocess_llama_2`` (``conv.sep_style == LLAMA_2``), run with
LLaVA-Med's own ``conversation`` module (``mistral_instruct``) and ``mm_utils``
(``tokenizer_image_token``), then the truncation of upstream's collator and the -200 splice
of LLaVA-Med's ``llava_arch.prepare_inputs_labels_for_multimodal`` on the ids (each -200
becomes 576 positions with label -100, then truncation to ``tokenizer_model_max_length``).
The tokenizer is upstream's training set-up (``use_fast=False``, ``pad_token = unk_token``).
Replaced: ``llava.model`` and ``llava.train.llava_trainer`` (imported by upstream's
``train.py``, unused by these functions).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.machinery
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

V10_COMMIT = "b9a98a736d2ef05bcf5ff345be6403fb3a664eaf"
V15_COMMIT = "d406e3fc7c3d1e4c797a7676de18cbfd070b6d2c"
UPSTREAM_COMMIT = "c121f0432da27facab705978f83c4ada465e46fd"
V10_MAX_LENGTH = 512  # train.py's default model_max_length
V15_MAX_LENGTH = 700  # > 576 image positions, so the splice truncation shows
V15_IMAGE_TOKENS = 576  # CLIP ViT-L/14-336: 24 x 24 patches

_LONG = (
    "The study shows a well-defined hypodense lesion in the right hepatic lobe measuring "
    "about four centimetres, with peripheral nodular enhancement on the arterial phase and "
    "progressive centripetal fill-in on the delayed images, typical of a haemangioma. "
)


def _turns(*pairs):
    return [dict(zip(("from", "value"), p)) for p in pairs]


# (name, record); records as in the LLaVA-Med JSON files. Image files are made for "image".
V10_SAMPLES = [
    (
        "image_first",
        dict(
            id="a",
            image="a.png",
            conversations=_turns(
                ("human", "<image>\nWhat modality is used here?"), ("gpt", "CT of the abdomen.")
            ),
        ),
    ),
    (
        "image_last",
        dict(
            id="b",
            image="b.png",
            conversations=_turns(
                ("human", "Describe the findings in this figure.\n<image>"),
                ("gpt", "A right pleural effusion.\nNo pneumothorax."),
            ),
        ),
    ),
    (
        "image_mid_spaces",
        dict(
            id="c",
            image="c.png",
            conversations=_turns(
                ("human", "Is the lesion  <image>  benign?"), ("gpt", "Most likely, yes.")
            ),
        ),
    ),
    (
        "multi_turn",
        dict(
            id="d",
            image="d.png",
            conversations=_turns(
                ("human", "<image>\nWhat organ is shown?"),
                ("gpt", "The liver."),
                ("human", "Is there a lesion?"),
                ("gpt", "Yes, a hypodense lesion in segment 4."),
                ("human", "How large is it?"),
                ("gpt", "About 2 cm."),
            ),
        ),
    ),
    (
        "text_only",
        dict(
            id="e",
            conversations=_turns(
                ("human", "What is a haemangioma?"), ("gpt", "A benign vascular tumour.")
            ),
        ),
    ),
    (
        "misspelt_key",
        dict(
            id="f",
            image="f.png",
            conversatons=_turns(("human", "<image>\nIs this normal?"), ("gpt", "no")),
        ),
    ),
    (
        "speaker_case_and_unknown",
        dict(
            id="g",
            image="g.png",
            conversations=_turns(
                ("Human", "<image>\nWhich side?"),
                ("GPT", "Left."),
                ("system", "Be brief."),
                ("human", "Sure?"),
                ("gpt", "Yes."),
            ),
        ),
    ),
    (
        "int_value",
        dict(
            id="h",
            image="h.png",
            conversations=[
                {"from": "human", "value": "<image>\nHow many nodules?"},
                {"from": "gpt", "value": 3},
            ],
        ),
    ),
    (
        "gpt_first",
        dict(
            id="i",
            image="i.png",
            conversations=_turns(
                ("gpt", "Here is a figure."), ("human", "<image>\nWhat is it?"), ("gpt", "An MRI.")
            ),
        ),
    ),
    (
        "long_truncated",
        dict(
            id="j",
            image="j.png",
            conversations=_turns(
                ("human", "<image>\nDescribe the image in detail."),
                ("gpt", _LONG * 2),
                ("human", "What else?"),
                ("gpt", _LONG * 3),
            ),
        ),
    ),
    (
        "truncated_in_image",
        dict(
            id="k",
            image="k.png",
            conversations=_turns(("human", _LONG * 4 + "\n<image>"), ("gpt", "A haemangioma.")),
        ),
    ),
    (
        "image_cut_off",
        dict(
            id="l",
            image="l.png",
            conversations=_turns(("human", _LONG * 9 + "\n<image>"), ("gpt", "A haemangioma.")),
        ),
    ),
]
# the samples also run with the other two tokenizer set-ups
V10_OTHER_SETUPS = ("multi_turn", "text_only")

V15_SAMPLES = [
    (
        "image_first",
        dict(
            id="a",
            image="a.png",
            conversations=_turns(
                ("human", "<image>\nWhat modality is used here?"), ("gpt", "CT of the abdomen.")
            ),
        ),
    ),
    (
        "image_last_moved_to_front",
        dict(
            id="b",
            image="b.png",
            conversations=_turns(
                ("human", "Describe the findings in this figure.\n<image>"),
                ("gpt", "A right pleural effusion.\nNo pneumothorax."),
            ),
        ),
    ),
    (
        "multi_turn",
        dict(
            id="d",
            image="d.png",
            conversations=_turns(
                ("human", "<image>\nWhat organ is shown?"),
                ("gpt", "The liver."),
                ("human", "Is there a lesion?"),
                ("gpt", "Yes, a hypodense lesion in segment 4."),
                ("human", "How large is it?"),
                ("gpt", "About 2 cm."),
            ),
        ),
    ),
    (
        "text_only",
        dict(
            id="e",
            conversations=_turns(
                ("human", "What is a haemangioma?"), ("gpt", "A benign vascular tumour.")
            ),
        ),
    ),
    (
        "gpt_first",
        dict(
            id="i",
            image="i.png",
            conversations=_turns(
                ("gpt", "Here is a figure."), ("human", "<image>\nWhat is it?"), ("gpt", "An MRI.")
            ),
        ),
    ),
    (
        "long_truncated",
        dict(
            id="j",
            image="j.png",
            conversations=_turns(
                ("human", "<image>\nDescribe the image in detail."),
                ("gpt", _LONG),
                ("human", "What else?"),
                ("gpt", _LONG),
            ),
        ),
    ),
    (
        "image_second_turn",
        dict(
            id="m",
            image="m.png",
            conversations=_turns(
                ("human", "What is a haemangioma?"),
                ("gpt", "A benign vascular tumour."),
                ("human", "Is this one?  <image>"),
                ("gpt", "Yes."),
            ),
        ),
    ),
    (
        "inst_in_text_mismatch",
        dict(
            id="n",
            image="n.png",
            conversations=_turns(
                ("human", "<image>\nRead the tag [/INST] aloud."), ("gpt", "It says INST.")
            ),
        ),
    ),
    (
        "truncated_in_image",
        dict(
            id="o",
            image="o.png",
            conversations=_turns(
                ("human", _LONG * 2),
                ("gpt", "Noted."),
                ("human", "<image>\nAnd this?"),
                ("gpt", "A cyst."),
            ),
        ),
    ),
    (
        "image_cut_off",
        dict(
            id="p",
            image="p.png",
            conversations=_turns(
                ("human", _LONG * 12),
                ("gpt", "Noted."),
                ("human", "<image>\nAnd this?"),
                ("gpt", "A cyst."),
            ),
        ),
    ),
]


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _versions() -> dict:
    import PIL
    import sentencepiece
    import tokenizers
    import torch
    import transformers

    return dict(
        python=sys.version.split()[0],
        transformers=transformers.__version__,
        tokenizers=tokenizers.__version__,
        sentencepiece=sentencepiece.__version__,
        torch=torch.__version__,
        pillow=PIL.__version__,
    )


def _write_images(records, folder: Path) -> None:
    from PIL import Image

    for _, record in records:
        if "image" in record:
            Image.new("RGB", (32, 24), (200, 30, 60)).save(folder / record["image"])


def _raw_llama_folder(sp_model: Path, folder: Path) -> dict[str, str]:
    """A LLaMA tokenizer folder as transformers saves one: ``tokenizer.model`` + JSON."""
    from transformers import LlamaTokenizer

    folder.mkdir(parents=True)
    LlamaTokenizer(vocab_file=str(sp_model)).save_pretrained(str(folder))
    return _json_files(folder)


def _json_files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.json"))}


def _pieces(tok, ids, skip):
    return tok.convert_ids_to_tokens([int(t) for t in ids if int(t) not in skip])


# ----------------------------------------------------------------------------- v1.0


def _v10_setup(T, model_cls, config_cls, folder: Path, max_length: int):
    """train.train()'s tokenizer set-up (train.py:504-524, 562-563) on a tiny model."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(
        str(folder), model_max_length=max_length, padding_side="right", use_fast=False
    )
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    model = model_cls(config)
    before = len(tok)
    added_pad = 0
    if tok.pad_token is None:  # model_args.version == "v0"
        added_pad = 1
        T.smart_tokenizer_and_embedding_resize(
            special_tokens_dict=dict(pad_token=T.DEFAULT_PAD_TOKEN), tokenizer=tok, model=model
        )
    if "llama" in str(folder):
        tok.add_special_tokens(
            {
                "eos_token": T.DEFAULT_EOS_TOKEN,
                "bos_token": T.DEFAULT_BOS_TOKEN,
                "unk_token": T.DEFAULT_UNK_TOKEN,
            }
        )
    # initialize_vision_tokenizer touches only the tower's config object
    model.model.vision_tower = [types.SimpleNamespace(config=types.SimpleNamespace())]
    model.initialize_vision_tokenizer(
        mm_use_im_start_end=True, tokenizer=tok, device="cpu", tune_mm_mlp_adapter=False
    )
    emb_in = model.get_input_embeddings().weight.data
    emb_out = model.get_output_embeddings().weight.data
    mean_init = {}
    for row in range(before, len(tok)):
        for name, table in (("input", emb_in), ("output", emb_out)):
            match = [
                r0
                for r0 in range(before, row + 1)
                if torch.equal(table[row], table[:r0].mean(dim=0))
            ]
            mean_init[f"{name}/{row}"] = match[0] if match else None
    names = ("[PAD]", "<im_patch>", "<im_start>", "<im_end>")
    setup = dict(
        folder_name=folder.name,
        path_has_llama="llama" in str(folder),
        tokenizer_class=type(tok).__name__,
        length_before=before,
        length=len(tok),
        added=dict(pad=added_pad, total=len(tok) - before),
        token_ids={n: tok.convert_tokens_to_ids(n) for n in names},
        special_ids=dict(
            pad=tok.pad_token_id, bos=tok.bos_token_id, eos=tok.eos_token_id, unk=tok.unk_token_id
        ),
        embedding_rows=int(emb_in.shape[0]),
        mean_init_from=mean_init,
    )
    return tok, setup


def _v10_rows(T, tok, setup_name, samples, image_folder: Path, max_length: int):
    from transformers import CLIPImageProcessor

    multimodal_cfg = dict(
        is_multimodal=True,
        image_token_len=256,
        image_folder=str(image_folder),
        image_aspect_ratio="square",
        use_im_start_end=True,
        image_processor=CLIPImageProcessor(),
    )
    data_file = image_folder / f"{setup_name}.json"
    data_file.write_text(json.dumps([copy.deepcopy(r) for _, r in samples]))
    ds = T.LazySupervisedDataset(str(data_file), tok, multimodal_cfg)
    collator = T.DataCollatorForSupervisedDataset(tokenizer=tok)
    patch = tok.convert_tokens_to_ids("<im_patch>")
    rows = []
    for i, (name, record) in enumerate(samples):
        out = ds[i]
        batch = collator([out])
        assert batch["input_ids"][0].tolist() == out["input_ids"].tolist()
        assert batch["attention_mask"][0].tolist() == out["input_ids"].ne(tok.pad_token_id).tolist()
        # the texts preprocess builds and tokenises (its local variables), re-made with the
        # original's own functions on a copy of the record
        source = copy.deepcopy(record.get("conversations", record.get("conversatons")))
        if "image" in record:
            source = T.preprocess_multimodal([source], multimodal_cfg, 256)[0]
        header = f"{T.conversation_lib.default_conversation.system}\n\n"
        text = T._add_speaker_and_signal(header, source)
        lens = T._tokenize_fn([header] + [s["value"] for s in source], tok)["input_ids_lens"]
        rows.append(
            dict(
                name=name,
                setup=setup_name,
                record=record,
                text=text.replace("<im_patch>" * 256, "<im_patch>*256"),
                segment_lengths=lens,
                input_ids=out["input_ids"].tolist(),
                labels=out["labels"].tolist(),
                image_shape=list(out["image"].shape),
                pieces=_pieces(tok, out["input_ids"].tolist(), {patch}),
            )
        )
    return rows


def _part_v10(args) -> dict:
    _stub("open_clip")
    sys.path.insert(0, str(args.src))
    import llava.train.train as T
    from llava.model.llava import LlavaConfig, LlavaLlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        assert "llama" not in str(tmp)
        images = tmp / "images"
        images.mkdir()
        _write_images(V10_SAMPLES, images)
        raw_files = _raw_llama_folder(args.sp_model, tmp / "base" / "vicuna-7b-v0")
        _raw_llama_folder(args.sp_model, tmp / "quirk" / "llama-med-vicuna-7b")
        setups, rows = {}, []
        tok, setups["base"] = _v10_setup(
            T, LlavaLlamaForCausalLM, LlavaConfig, tmp / "base" / "vicuna-7b-v0", V10_MAX_LENGTH
        )
        rows += _v10_rows(T, tok, "base", V10_SAMPLES, images, V10_MAX_LENGTH)
        saved = tmp / "saved" / "llava-7b-v0"
        tok.save_pretrained(str(saved))
        saved_files = _json_files(saved)
        others = [(n, r) for n, r in V10_SAMPLES if n in V10_OTHER_SETUPS]
        for name, folder in (
            ("bos_quirk", tmp / "quirk" / "llama-med-vicuna-7b"),
            ("preexisting", saved),
        ):
            tok, setups[name] = _v10_setup(
                T, LlavaLlamaForCausalLM, LlavaConfig, folder, V10_MAX_LENGTH
            )
            rows += _v10_rows(T, tok, name, others, images, V10_MAX_LENGTH)
        # the eval prompt of llava/eval/model_vqa_med.py (conv-mode "simple", start/end on)
        conv = T.conversation_lib.conv_templates["simple"].copy()
        question = "Is there a pleural effusion?"
        qs = question + "\n" + "<im_start>" + "<im_patch>" * 256 + "<im_end>"
        conv.append_message(conv.roles[0], qs)
        prompt = conv.get_prompt()
        eval_ids = tok([prompt]).input_ids[0]
    return dict(
        repo="microsoft/LLaVA-Med",
        commit=V10_COMMIT,
        procedure=(
            "llava/train/train.py: train() tokenizer set-up, LazySupervisedDataset.__getitem__ "
            "(preprocess_multimodal + preprocess, version v0), DataCollatorForSupervisedDataset"
        ),
        versions=_versions(),
        max_length=V10_MAX_LENGTH,
        image_token_len=256,
        system=T.conversation_lib.default_conversation.system,
        roles=list(T.conversation_lib.default_conversation.roles),
        raw_tokenizer_files=raw_files,
        saved_tokenizer_files=saved_files,
        setups=setups,
        eval_prompt=dict(
            question=question,
            prompt=prompt.replace("<im_patch>" * 256, "<im_patch>*256"),
            input_ids=list(eval_ids),
        ),
        samples=rows,
    )


# ----------------------------------------------------------------------------- v1.5


def _load_upstream_train(upstream: Path):
    """upstream LLaVA's llava/train/train.py as a module, importing LLaVA-Med v1.5's
    ``llava.conversation`` / ``llava.mm_utils`` / ``llava.constants``."""
    _stub("llava.model")
    _stub("llava.train")
    _stub("llava.train.llava_trainer", LLaVATrainer=object)
    path = upstream / "llava" / "train" / "train.py"
    spec = importlib.util.spec_from_file_location("upstream_llava_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _part_v15(args) -> dict:
    import torch
    import transformers

    sys.path.insert(0, str(args.src))
    import llava.conversation as conversation_lib
    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    up = _load_upstream_train(args.upstream)
    assert up.conversation_lib is conversation_lib  # LLaVA-Med's templates
    conversation_lib.default_conversation = conversation_lib.conv_templates["mistral_instruct"]
    data_args = types.SimpleNamespace(is_multimodal=True, mm_use_im_start_end=False)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llava-med-v1.5-mistral-7b"
        raw_files = _raw_llama_folder(args.sp_model, folder)
        # upstream train(): use_fast=False; version "mistral_instruct" -> pad = unk
        tok = transformers.AutoTokenizer.from_pretrained(
            str(folder), model_max_length=V15_MAX_LENGTH, padding_side="right", use_fast=False
        )
        tok.pad_token = tok.unk_token
        rows = []
        for name, record in V15_SAMPLES:
            source = copy.deepcopy(record["conversations"])
            has_image = "image" in record
            if has_image:
                source = up.preprocess_multimodal([source], data_args)[0]
            out = up.preprocess([source], tok, has_image=has_image)
            ids, labels = out["input_ids"][0], out["labels"][0]
            # upstream collator: truncate to model_max_length (pad / attention on one row)
            ids, labels = ids[: tok.model_max_length], labels[: tok.model_max_length]
            attention = ids.ne(tok.pad_token_id)
            # llava_arch.prepare_inputs_labels_for_multimodal on the ids
            ids, labels = ids[attention], labels[attention]
            new_ids, new_labels = [], []
            for t, lab in zip(ids.tolist(), labels.tolist()):
                if t == IMAGE_TOKEN_INDEX:
                    new_ids += [IMAGE_TOKEN_INDEX] * V15_IMAGE_TOKENS
                    new_labels += [IGNORE_INDEX] * V15_IMAGE_TOKENS
                else:
                    new_ids.append(t)
                    new_labels.append(lab)
            new_ids, new_labels = new_ids[:V15_MAX_LENGTH], new_labels[:V15_MAX_LENGTH]
            conv = conversation_lib.default_conversation.copy()
            roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
            src = source[1:] if roles[source[0]["from"]] != conv.roles[0] else source
            conv.messages = []
            for sentence in src:
                conv.append_message(roles[sentence["from"]], sentence["value"])
            prompt = conv.get_prompt()
            pre = tokenizer_image_token(prompt, tok) if has_image else tok(prompt).input_ids
            rows.append(
                dict(
                    name=name,
                    record=record,
                    prompt=prompt,
                    prompt_ids=list(pre),
                    input_ids=new_ids,
                    labels=new_labels,
                    pieces=_pieces(tok, new_ids, {IMAGE_TOKEN_INDEX}),
                )
            )
        # the eval prompt of llava/eval/model_vqa.py (conv-mode mistral_instruct)
        conv = conversation_lib.conv_templates["mistral_instruct"].copy()
        question = "Is there a pleural effusion?"
        conv.append_message(conv.roles[0], "<image>\n" + question)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        eval_ids = tokenizer_image_token(prompt, tok, IMAGE_TOKEN_INDEX)
        del torch
    return dict(
        repo="microsoft/LLaVA-Med",
        commit=V15_COMMIT,
        upstream=dict(repo="haotian-liu/LLaVA", commit=UPSTREAM_COMMIT),
        procedure=(
            "upstream llava/train/train.py preprocess_multimodal + preprocess (-> "
            "preprocess_llama_2) with LLaVA-Med's conv_templates['mistral_instruct'] and "
            "tokenizer_image_token; upstream collator truncation; LLaVA-Med llava_arch splice "
            "(576 positions, label -100) and tokenizer_model_max_length truncation"
        ),
        versions=_versions(),
        max_length=V15_MAX_LENGTH,
        image_token_len=V15_IMAGE_TOKENS,
        image_token_index=IMAGE_TOKEN_INDEX,
        raw_tokenizer_files=raw_files,
        special_ids=dict(
            pad=tok.pad_token_id, bos=tok.bos_token_id, eos=tok.eos_token_id, unk=tok.unk_token_id
        ),
        eval_prompt=dict(question=question, prompt=prompt, input_ids=list(eval_ids)),
        samples=rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", required=True, choices=("v1.0", "v1.5"))
    parser.add_argument("--src", required=True, type=Path)
    parser.add_argument("--upstream", type=Path)
    parser.add_argument("--sp_model", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    part = _part_v10(args) if args.part == "v1.0" else _part_v15(args)
    part["sp_model"] = args.sp_model.name
    part["sp_model_sha256"] = hashlib.sha256(args.sp_model.read_bytes()).hexdigest()
    golden = json.loads(args.out.read_text()) if args.out.exists() else {}
    golden[args.part] = part
    parts = []
    for key in sorted(golden):
        value = golden[key]
        head = json.dumps({k: v for k, v in value.items() if k != "samples"}, indent=1)[:-2]
        lines = ",\n".join("   " + json.dumps(r, ensure_ascii=False) for r in value["samples"])
        parts.append(f' "{key}": {head},\n  "samples": [\n{lines}\n  ]\n }}')
    args.out.write_text("{\n" + ",\n".join(parts) + "\n}\n")
    json.loads(args.out.read_text())  # well-formed
    print(f"wrote {args.part} to {args.out}: {len(part['samples'])} samples")


if __name__ == "__main__":
    main()
