"""Starting Recformer from BERT-layout encoders: tiny random BERT, RoBERTa and DistilRoBERTa folders made
here are converted, and the converted encoder must compute what the source computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaModel,
)

from recformer import RecformerConfig, RecformerModel, RecformerTokenizer, load_checkpoint
from recformer.io.backbone_mapping import encoder_to_pretraining
from recformer.io.backbones import refusal_reason
from recformer.io.checkpoint_files import read_state_dict
from recformer.io.conversion import ConversionError
from recformer.io.pipeline_steps import write_start_point

from .conftest import TINY_TOKENIZER_DIR
from .finetune_fixtures import WORDS

ITEMS = [
    {"title": "red shoe 12", "brand": "acme", "category": "x y"},
    {"title": "blue wool hat", "brand": "soft"},
    {"title": "warm sock 7"},
]
BERT_POSITIONS = 64
WIDE_WINDOW = 64  # local attention covers every token of the test inputs


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its initial value (LayerNorms too, token-type rows apart), so a weight
    that is not carried over shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)


def wordpiece_vocab() -> list[str]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    words = sorted(set(WORDS) | {"category", "acme", "hat", "shoe"})
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters), *words]


def write_wordpiece_tokenizer(folder: Path) -> dict[str, int]:
    """A tiny BERT tokenizer (WordPiece, lower case) whose tokenizer.json pads to 16 and truncates, as some
    published tokenizer files do."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(wordpiece_vocab())}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=16)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    special = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, **special}))
    return vocab


def tiny_sizes(**overrides) -> dict:
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)  # fmt: skip
    return {**sizes, **overrides}


def make_bert(root: Path, masked_lm: bool = False, **overrides) -> tuple[Path, torch.nn.Module]:
    folder = root / ("bert-mlm" if masked_lm else "bert")
    vocab = write_wordpiece_tokenizer(folder)
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=BERT_POSITIONS, type_vocab_size=2,
                        pad_token_id=0, **tiny_sizes(**overrides))  # fmt: skip
    torch.manual_seed(0)
    model = (BertForMaskedLM if masked_lm else BertModel)(config)
    perturb(model)
    model.save_pretrained(folder)
    return folder, model


def make_roberta(folder: Path, layers: int = 2, masked_lm: bool = True) -> tuple[Path, torch.nn.Module]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TINY_TOKENIZER_DIR / name, folder / name)
    config = RobertaConfig(vocab_size=275, max_position_embeddings=BERT_POSITIONS + 2, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, **tiny_sizes(num_hidden_layers=layers))  # fmt: skip
    torch.manual_seed(1)
    model = (RobertaForMaskedLM if masked_lm else RobertaModel)(config)
    perturb(model, seed=1)
    model.save_pretrained(folder)
    return folder, model


def make_sentence_transformers(root: Path, mode: str = "mean_tokens") -> tuple[Path, torch.nn.Module]:
    """A DistilRoBERTa sentence encoder (one layer) in the sentence-transformers layout: the encoder in
    0_Transformer/, the pooling settings in 1_Pooling/."""
    folder = root / "distilroberta-st"
    _, model = make_roberta(folder / "0_Transformer", layers=1, masked_lm=False)
    (folder / "1_Pooling").mkdir()
    modes = {f"pooling_mode_{m}": m == mode for m in ("cls_token", "mean_tokens", "max_tokens")}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    modules = [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]  # fmt: skip
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder, model


def convert(source: Path, out: Path, *flags: str, **kwargs):
    return write_start_point(str(source), out / "start.bin", **kwargs)


def converted_model(start, attn: str = "eager") -> tuple[RecformerModel, RecformerTokenizer]:
    config = RecformerConfig.from_pretrained(start.folder)
    config.attention_window = [WIDE_WINDOW] * config.num_hidden_layers
    model = RecformerModel(config)
    load_checkpoint(model, start.file)
    model.set_attn_implementation(attn)
    return model.eval(), RecformerTokenizer.from_pretrained(str(start.folder), config)


def assert_same_as_source(start, source: torch.nn.Module, attn: str = "eager") -> None:
    """Hidden states of every real token and the pooled vector equal the source's on the Recformer tokenizer's
    input (padded batch; `<s>` global; any token types and item positions)."""
    model, tokenizer = converted_model(start, attn)
    batch = tokenizer([[ITEMS[0]], [ITEMS[1], ITEMS[2]], [ITEMS[2]]], return_tensor=True)
    assert batch["attention_mask"][2].sum() < batch["attention_mask"].shape[1]  # padding is exercised
    encoder = getattr(source, "bert", None) or getattr(source, "roberta", None) or source
    encoder.set_attn_implementation("eager")
    with torch.no_grad():
        ours = model(**batch)
        theirs = encoder.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours.last_hidden_state[real], theirs[real], atol=1e-5, rtol=0)
    mask = real.unsqueeze(-1).float()
    expected = theirs[:, 0] if model.config.pooler_type == "cls" else (theirs * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(ours.pooler_output, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_outputs_equal_the_source(tmp_path, attn, highest_matmul_precision):
    folder, bert = make_bert(tmp_path)
    start = convert(folder, tmp_path / "out")
    assert start.report.source_tensors is None
    assert RecformerConfig.from_pretrained(start.folder).pooler_type == "cls"
    assert_same_as_source(start, bert, attn)


def test_roberta_outputs_equal_the_source(tmp_path, highest_matmul_precision):
    folder, roberta = make_roberta(tmp_path / "roberta")
    start = convert(folder, tmp_path / "out")
    assert_same_as_source(start, roberta)
    # RoBERTa already numbers tokens from pad_token_id + 1 = 2: the rows stay where they are
    state = read_state_dict(start.file)
    source = roberta.state_dict()
    positions = state["longformer.embeddings.position_embeddings.weight"]
    assert positions.shape[0] == BERT_POSITIONS + 2
    assert torch.equal(positions[2:], source["roberta.embeddings.position_embeddings.weight"][2:])
    assert not positions[:2].any()
    # its masked-LM head is carried over
    for key in ("lm_head.dense.weight", "lm_head.layer_norm.bias", "lm_head.bias"):
        assert torch.equal(state[key], source[key]), key


def test_distilroberta_sentence_encoder_keeps_mean_pooling(tmp_path, highest_matmul_precision):
    folder, model = make_sentence_transformers(tmp_path)
    start = convert(folder, tmp_path / "out")
    config = RecformerConfig.from_pretrained(start.folder)
    assert config.pooler_type == "avg" and config.num_hidden_layers == 1
    assert any("mean pooling" in line for line in start.report.lines())
    assert_same_as_source(start, model)
    overridden = convert(folder, tmp_path / "cls", pooler_type="cls")
    assert RecformerConfig.from_pretrained(overridden.folder).pooler_type == "cls"


def test_bert_mapping_rows(tmp_path):
    """Positions shift by one (the padding row is zero), every token-type row is segment 0, item positions
    are zero, query/key/value go to both projections, BERT's masked-LM head becomes the LM head."""
    folder, bert = make_bert(tmp_path, masked_lm=True)
    start = convert(folder, tmp_path / "out")
    state, source = read_state_dict(start.file), bert.state_dict()
    config = RecformerConfig.from_pretrained(start.folder)
    assert config.max_position_embeddings == BERT_POSITIONS + 1 and config.max_token_num == BERT_POSITIONS
    positions = state["longformer.embeddings.position_embeddings.weight"]
    assert not positions[0].any()
    assert torch.equal(positions[1:], source["bert.embeddings.position_embeddings.weight"])
    segment0 = source["bert.embeddings.token_type_embeddings.weight"][0]
    assert all(torch.equal(row, segment0) for row in state["longformer.embeddings.token_type_embeddings.weight"])
    assert not state["longformer.embeddings.item_position_embeddings.weight"].any()
    query = source["bert.encoder.layer.1.attention.self.query.weight"]
    assert torch.equal(state["longformer.encoder.layer.1.attention.self.query.weight"], query)
    assert torch.equal(state["longformer.encoder.layer.1.attention.self.query_global.weight"], query)
    assert torch.equal(state["lm_head.dense.weight"], source["cls.predictions.transform.dense.weight"])
    assert torch.equal(state["lm_head.layer_norm.weight"], source["cls.predictions.transform.LayerNorm.weight"])
    assert torch.equal(state["lm_head.decoder.weight"], source["bert.embeddings.word_embeddings.weight"])
    assert "cls.predictions.transform.dense.weight" not in start.report.dropped


def test_position_extension_repeats_the_learned_rows(tmp_path, highest_matmul_precision):
    folder, bert = make_bert(tmp_path)
    start = convert(folder, tmp_path / "out", fields={"max_token_num": 150})
    config = RecformerConfig.from_pretrained(start.folder)
    assert config.max_token_num == 150 and config.max_position_embeddings == 151
    positions = read_state_dict(start.file)["longformer.embeddings.position_embeddings.weight"]
    learned = bert.state_dict()["embeddings.position_embeddings.weight"]
    for p in (0, 63, 64, 100, 149):
        assert torch.equal(positions[1 + p], learned[p % BERT_POSITIONS]), p
    assert any("extended" in line for line in start.report.lines())
    assert_same_as_source(start, bert)  # short inputs are unaffected


def test_tokenizer_folder_has_bert_special_tokens_and_no_padding(tmp_path):
    folder, _ = make_bert(tmp_path)
    vocab = {t: i for i, t in enumerate(wordpiece_vocab())}
    start = convert(folder, tmp_path / "out")
    written = json.loads((start.folder / "tokenizer.json").read_text())
    assert written["padding"] is None and written["truncation"] is None
    tokenizer = RecformerTokenizer.from_pretrained(str(start.folder), RecformerConfig.from_pretrained(start.folder))
    assert len(tokenizer) == len(vocab)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"])
    assert (tokenizer.sep_token_id, tokenizer.mask_token_id) == (vocab["[SEP]"], vocab["[MASK]"])
    ids = [tokenizer.encode_item(item)[0] for item in ITEMS]
    assert len({tuple(i) for i in ids}) == len(ITEMS) and vocab["[PAD]"] not in ids[0]
    assert tokenizer.encode_item({"Colour": "RED"})[0] == [vocab["c"], *(vocab["##" + c] for c in "olour"), vocab["red"]]


def write_config(folder: Path, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "config, phrase",
    [
        ({"model_type": "modernbert"}, "pre-LayerNorm layers, rotary positions and a gated"),
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "is a decoder"),
        ({"model_type": "llama"}, "is a decoder"),
        ({"model_type": "bert", "position_embedding_type": "relative_key"}, "relative_key position embeddings"),
        ({"model_type": "bert", "is_decoder": True}, "configured as a decoder"),
        ({"model_type": "xlnet"}, "not a BERT-layout encoder"),
    ],
)
def test_unfit_architectures_are_refused_in_one_line(tmp_path, config, phrase):
    assert phrase in refusal_reason(config)
    folder = write_config(tmp_path / "src", **config)
    with pytest.raises(ConversionError) as e:
        convert(folder, tmp_path / "out")
    assert phrase in str(e.value) and "\n" not in str(e.value) and str(folder) in str(e.value)
    assert not (tmp_path / "out" / "start.bin").exists() and not (tmp_path / "out" / "start").exists()


def test_unavailable_sentence_pooling_is_refused_unless_overridden(tmp_path):
    folder, _ = make_sentence_transformers(tmp_path, mode="max_tokens")
    with pytest.raises(ConversionError, match=r"pooling \['max_tokens'\].*--pooler_type"):
        convert(folder, tmp_path / "out")
    start = convert(folder, tmp_path / "out", pooler_type="avg")
    assert RecformerConfig.from_pretrained(start.folder).pooler_type == "avg"


def test_fewer_layers_than_the_config_name_the_missing_tensors(tmp_path):
    _, bert = make_bert(tmp_path)
    config = RecformerConfig(vocab_size=bert.config.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                             intermediate_size=37, max_position_embeddings=65, pad_token_id=0, max_token_num=64,
                             attention_window=[8] * 3)  # fmt: skip
    with pytest.raises(ConversionError, match=r"encoder\.layer\.2\.attention"):
        encoder_to_pretraining(bert.state_dict(), "bert", 0, config)


def test_cli_prints_the_summary(tmp_path, capsys):
    from recformer.cli import save_longformer_ckpt as cli

    folder, _ = make_bert(tmp_path)
    code = cli.main(["--model_name_or_path", str(folder), "--output", str(tmp_path / "out" / "bert.bin"),
                     "--attention_window", "16"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for phrase in ("copied: 47 keys", "positions: source rows 0..63 -> Recformer rows 1..64",
                   "all 4 rows are the source's segment-0 vector", "masked-LM head: the source has none",
                   "dropped: 2 [pooler.dense", "pooler_type cls", "bos=[CLS]"):  # fmt: skip
        assert phrase in out, phrase
    code = cli.main(["--model_name_or_path", str(write_config(tmp_path / "mb", model_type="modernbert")),
                     "--output", str(tmp_path / "out2" / "x.bin")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "modernbert has pre-LayerNorm layers" in err


def test_pipeline_runs_on_a_converted_bert(tmp_path):
    """finetune (zero-shot, training, test), evaluate and recommend on the tiny dataset from a converted BERT."""
    from recformer import Recommender
    from recformer.args import FinetuneArgs
    from recformer.cli import evaluate as evaluate_cli
    from recformer.train.finetune import Finetuner

    from .finetune_fixtures import make_dataset

    folder, _ = make_bert(tmp_path)
    start = convert(folder, tmp_path / "start", fields={"attention_window": [16]})
    data = make_dataset(tmp_path)
    args = FinetuneArgs(
        pretrain_ckpt=str(start.file), data_path=str(data), model_name_or_path=str(start.folder),
        output_dir=str(tmp_path / "ft"), num_train_epochs=1, verbose=1, batch_size=8, gradient_accumulation_steps=1,
        finetune_negative_sample_size=-1, warmup_steps=1, learning_rate=1e-3, device="cpu", progress=False,
    )  # fmt: skip
    metrics = Finetuner(args).run()
    for split in ("zero_shot_test", "test"):
        assert 0.0 <= metrics[split]["NDCG@10"] <= 1.0 and metrics[split]["Recall@50"] > 0.0
    best = tmp_path / "ft" / "Tiny" / "best_model.bin"
    out = tmp_path / "eval.json"
    assert evaluate_cli.main(["--ckpt", str(best), "--data_path", str(data), "--device", "cpu", "--no_progress",
                              "--model_name_or_path", str(start.folder), "--output", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["metrics"] == pytest.approx(metrics["test"], abs=1e-6)
    rec = Recommender.from_pretrained(best, data / "meta_data.json", start.folder, device="cpu", progress=False)
    top = rec.recommend([["B000000001", "B000000002"]], k=5)
    assert len(top[0]) == 5


def test_whole_word_masking_groups_wordpiece_continuations(tmp_path):
    """Pretraining from a converted BERT: a word is a token and its '##' pieces (not every token up to the next 'Ġ')."""
    from recformer.train.collators import WholeWordMasker

    folder, _ = make_bert(tmp_path)
    start = convert(folder, tmp_path / "out")
    tokenizer = RecformerTokenizer.from_pretrained(str(start.folder), RecformerConfig.from_pretrained(start.folder))
    ids = [tokenizer.bos_token_id, *tokenizer.encode_item({"title": "red hatz"})[0]]  # title | red | hat ##z
    assert WholeWordMasker(tokenizer).words(ids) == [[1], [2], [3, 4]]


def test_pretraining_runs_on_a_converted_bert(tmp_path):
    """lightning_pretrain.py a few steps from a converted BERT (WordPiece masking, [MASK] and [CLS] from its vocabulary)."""
    import os
    import subprocess
    import sys

    from .synthetic import write_corpus

    root = Path(__file__).resolve().parents[1]
    folder, _ = make_bert(tmp_path)
    start = convert(folder, tmp_path / "start", fields={"attention_window": [16]})
    data = write_corpus(tmp_path / "corpus", n_items=60, n_train=40, n_dev=16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(root / "lightning_pretrain.py"), "--model_name_or_path", str(start.folder),
         "--longformer_ckpt", str(start.file), "--train_file", str(data["train"]), "--dev_file", str(data["dev"]),
         "--item_attr_file", str(data["meta"]), "--output_dir", str(tmp_path / "run"), "--batch_size", "8",
         "--gradient_accumulation_steps", "1", "--device", "cpu", "--max_steps", "3", "--valid_step", "3",
         "--log_step", "1", "--dataloader_num_workers", "0", "--no_progress"],
        cwd=root, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["global_step"] == 3
