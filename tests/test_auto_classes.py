"""transformers conventions: the auto classes know Recformer (`model_type: recformer`), folders and configs
of the older `model_type: longformer` still load, and every save_pretrained folder gets a model card."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoTokenizer, LongformerConfig

from recformer import (
    RecformerConfig,
    RecformerForPretraining,
    RecformerForSeqRec,
    RecformerModel,
    load_checkpoint,
)
from recformer.io.model_card import CARD_FILE, FOLDER_PLACEHOLDER
from recformer.io.output_paths import save_pretrained_folder
from recformer.model.configuration import build_config, register_auto_config
from recformer.model.modeling import register_auto_models

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def transformers_warnings():
    """The warnings transformers logs meanwhile (its logger does not propagate to the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def seqrec(config, items: int = 5) -> RecformerForSeqRec:
    model = RecformerForSeqRec(config)
    model.init_item_embedding(torch.randn(items, config.hidden_size))
    return model.eval()


def batch_items() -> tuple[list]:
    return ([[{"title": "red pen"}, {"title": "blue ink"}]],)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def make_old(folder: Path) -> None:
    """What this package (and the reference code) wrote before: the same files with `model_type: longformer`."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["model_type"] = "longformer"
    path.write_text(json.dumps(config))


def test_auto_classes_return_recformer_models(tmp_path, config, tokenizer):
    model = seqrec(config)
    save_pretrained_folder(tmp_path / "seqrec", model, tokenizer)
    assert json.loads((tmp_path / "seqrec" / "config.json").read_text())["model_type"] == "recformer"
    assert type(AutoConfig.from_pretrained(tmp_path / "seqrec")) is RecformerConfig

    encoder = AutoModel.from_pretrained(tmp_path / "seqrec").eval()  # the encoder of a model with a head
    assert type(encoder) is RecformerModel and same_weights(encoder, model.longformer)
    batch = tokenizer(*batch_items(), return_tensor=True)
    with torch.no_grad():
        torch.testing.assert_close(encoder(**batch).pooler_output, model.longformer(**batch).pooler_output)

    auto_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "seqrec")  # with the folder's Recformer fields
    assert type(auto_tokenizer) is type(tokenizer) and auto_tokenizer.config.max_token_num == config.max_token_num
    assert auto_tokenizer(*batch_items(), return_tensor=True)["input_ids"].tolist() == batch["input_ids"].tolist()

    pretraining = RecformerForPretraining(config)
    pretraining.save_pretrained(tmp_path / "pretraining")
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path / "pretraining")
    assert type(loaded) is RecformerForPretraining and same_weights(loaded, pretraining)


def test_registration_is_idempotent_and_leaves_transformers_types_alone():
    for _ in range(2):
        register_auto_config()
        register_auto_models()
    assert AutoConfig.for_model("recformer").__class__ is RecformerConfig
    assert type(AutoConfig.for_model("longformer")) is LongformerConfig
    assert AutoModel._model_mapping[RecformerConfig] is RecformerModel
    assert AutoModelForPreTraining._model_mapping[RecformerConfig] is RecformerForPretraining
    assert AutoModel._model_mapping[LongformerConfig].__name__ == "LongformerModel"


def test_a_fresh_process_needs_only_a_model_import(tmp_path, config, tokenizer):
    save_pretrained_folder(tmp_path / "encoder", RecformerModel(config), tokenizer)
    code = ("import sys; from recformer import RecformerModel; from transformers import AutoModel, AutoTokenizer; "
            "print(type(AutoModel.from_pretrained(sys.argv[1])).__name__, "
            "type(AutoTokenizer.from_pretrained(sys.argv[1])).__name__)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "encoder")], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "RecformerModel RecformerTokenizer"


def test_folders_of_the_older_longformer_type_still_load(tmp_path, config, tokenizer):
    model = seqrec(config)
    save_pretrained_folder(tmp_path / "old", model, tokenizer)
    make_old(tmp_path / "old")
    with transformers_warnings() as warnings:
        restored = RecformerForSeqRec.from_pretrained(tmp_path / "old")
        built = build_config(tmp_path / "old")
    assert not [r for r in warnings if "model of type" in r.getMessage()], [r.getMessage() for r in warnings]
    assert restored.config.model_type == built.model_type == "recformer"
    assert same_weights(restored.eval(), model)
    assert built.max_token_num == config.max_token_num  # its own Recformer fields, not the reference values
    target = RecformerForSeqRec(config)
    load_checkpoint(target, tmp_path / "old")
    assert same_weights(target, model)
    restored.save_pretrained(tmp_path / "resaved")  # saved again: the new type
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["model_type"] == "recformer"


def test_longformer_configs_and_released_files_load_without_a_warning(tmp_path):
    folder = tmp_path / "longformer"
    LongformerConfig(vocab_size=275, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                     max_position_embeddings=300, type_vocab_size=1).save_pretrained(folder)  # fmt: skip
    with transformers_warnings() as warnings:
        config = RecformerConfig.from_pretrained(folder)
        from_dict = RecformerConfig.from_dict(LongformerConfig().to_dict())
    assert not [r for r in warnings if "model of type" in r.getMessage()]
    assert config.model_type == from_dict.model_type == "recformer"
    config.max_token_num, config.max_item_embeddings, config.attention_window = 256, 51, [4, 8]
    # the released files: a RecformerModel state dict, and the SeqRec form with lm_head.*
    released = RecformerForPretraining(config).state_dict()
    torch.save({k.removeprefix("longformer."): v for k, v in released.items() if k.startswith("longformer.")},
               tmp_path / "recformer_ckpt.bin")  # fmt: skip
    torch.save(released, tmp_path / "recformer_seqrec_ckpt.bin")
    encoder = RecformerModel(config)
    encoder.load_state_dict(torch.load(tmp_path / "recformer_ckpt.bin"))
    load_checkpoint(RecformerForSeqRec(config), tmp_path / "recformer_seqrec_ckpt.bin")


# -- model card ----------------------------------------------------------------------------------


def run_card_snippet(card: str, folder: Path) -> dict:
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace(FOLDER_PLACEHOLDER, str(folder))
    namespace: dict = {}
    exec(compile(code, str(folder / CARD_FILE), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("cls", [RecformerModel, RecformerForPretraining, RecformerForSeqRec])
def test_every_saved_folder_gets_a_card_whose_code_loads_it(tmp_path, config, tokenizer, cls):
    model = seqrec(config) if cls is RecformerForSeqRec else cls(config).eval()
    save_pretrained_folder(tmp_path / "saved", model, tokenizer)
    card = (tmp_path / "saved" / CARD_FILE).read_text()
    assert card.startswith("---\n") and f"# Recformer: {cls.__name__}" in card
    assert "## Method" in card and "Longformer" in card and f"Hidden size {config.hidden_size}" in card
    assert "Not recorded" in card and "## Metrics" not in card  # not in a run folder
    namespace = run_card_snippet(card, tmp_path / "saved")
    loaded = namespace["model"]
    assert type(loaded) is cls and not loaded.training and same_weights(loaded, model)
    assert namespace["tokenizer"].encode_item({"title": "red"}) == tokenizer.encode_item({"title": "red"})


def test_a_card_in_a_run_folder_names_the_data_and_the_metrics(tmp_path, config, tokenizer):
    run = tmp_path / "checkpoints" / "Scientific"
    run.mkdir(parents=True)
    args = {"data_path": "finetune_data/Scientific", "pretrain_ckpt": "pretrain_ckpt/recformer_seqrec_ckpt.bin",
            "num_train_epochs": 128, "learning_rate": 5e-5, "seed": 42}  # fmt: skip
    test = {"NDCG@10": 0.10271, "Recall@10": 0.14482, "MRR": 0.09513}
    metrics = {"zero_shot_test": {"NDCG@10": 0.04, "Recall@10": 0.06, "MRR": 0.03},
               "dev": [], "best_dev": {"stage": 2, "epoch": 5, "step": 70, "NDCG@10": 0.11, "Recall@10": 0.15,
                                       "MRR": 0.1}, "test": test}  # fmt: skip
    (run / "args.json").write_text(json.dumps(args))
    (run / "metrics.json").write_text(json.dumps(metrics))
    save_pretrained_folder(run / "best_model", seqrec(config), tokenizer)
    card = (run / "best_model" / CARD_FILE).read_text()
    assert "`finetune_data/Scientific`" in card and "`pretrain_ckpt/recformer_seqrec_ckpt.bin`" in card
    assert "| split | NDCG@10 | Recall@10 | MRR |" in card
    assert "| test (best dev checkpoint) | 0.1027 | 0.1448 | 0.0951 |" in card
    assert "| best dev (stage 2, epoch 5) | 0.1100 | 0.1500 | 0.1000 |" in card
    assert "5 items" in card  # the item table
    assert type(run_card_snippet(card, run / "best_model")["model"]) is RecformerForSeqRec

