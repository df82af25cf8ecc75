"""Tokenizers that cannot silently go wrong: padding/truncation from the file, missing special tokens, ids
past the embedding table, missing tokenizer files, offline hub ids, a degenerate catalogue."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections import Counter

import pytest

from recformer import RecformerTokenizer
from recformer.model.item_tokens import tokenize_catalogue
from recformer.model.tokenization import TokenizerError, check_tokenizer_fits

from .conftest import TINY_TOKENIZER_DIR, tiny_config
from .helpers import WORDPIECE_VOCAB, padded_bpe_tokenizer_folder, wordpiece_tokenizer_folder

TITLE, BRAND, SHOE, RED = 263, 267, 271, 273  # the tiny byte-level vocabulary (test_tokenization.py)
WP = {t: i for i, t in enumerate(WORDPIECE_VOCAB)}
ITEMS = [{"title": "red shoes", "brand": "a"}, {"title": "blue shoe", "brand": "b"}, {"title": "red", "brand": "b"}]


def byte(ch: str) -> int:
    return 4 + ord(ch)


def test_padding_and_truncation_in_a_wordpiece_tokenizer_file_are_switched_off(tmp_path):
    folder = wordpiece_tokenizer_folder(tmp_path / "wp")
    assert json.loads((folder / "tokenizer.json").read_text())["padding"]["strategy"] == {"Fixed": 16}  # on in the file
    tok = RecformerTokenizer.from_pretrained(str(folder), tiny_config(vocab_size=len(WORDPIECE_VOCAB)))
    assert tok.backend_tokenizer.padding is None and tok.backend_tokenizer.truncation is None
    assert tok.item_tokenize("title") == [WP["title"]]
    expected = [
        ([WP["title"], WP["red"], WP["shoe"], WP["##s"], WP["brand"], WP["a"]], [1, 2, 2, 2, 1, 2]),
        ([WP["title"], WP["blue"], WP["shoe"], WP["brand"], WP["b"]], [1, 2, 2, 1, 2]),
        ([WP["title"], WP["red"], WP["brand"], WP["b"]], [1, 2, 1, 2]),
    ]
    assert tok.tokenize_items(ITEMS, use_cache=False) == expected
    table = tokenize_catalogue(tok, ITEMS, progress=False)
    assert [table[i] for i in range(3)] == expected


def test_padding_switched_on_again_after_loading_is_switched_off_before_items_are_tokenized(tmp_path):
    """item_tokenize, tokenize_items and tokenize_catalogue each switch the backend back to plain."""
    tok = RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), tiny_config())
    for call in (lambda: tok.item_tokenize("red"), lambda: tok.tokenize_items([{"title": "red"}], use_cache=False),
                 lambda: tokenize_catalogue(tok, [{"title": "red"}], progress=False)[0]):  # fmt: skip
        tok.backend_tokenizer.enable_padding(pad_id=1, pad_token="<pad>", length=64)
        tok.backend_tokenizer.enable_truncation(max_length=64)
        got = call()
        assert got in ([RED], [([TITLE, RED], [1, 2])], ([TITLE, RED], [1, 2]))
        assert tok.backend_tokenizer.padding is None and tok.backend_tokenizer.truncation is None
    # the catalogue's cache file is keyed by the plain tokenizer, whatever was switched on before
    tokenize_catalogue(tok, [{"title": "red"}], cache_dir=tmp_path / "plain", progress=False)
    tok.backend_tokenizer.enable_padding(pad_id=1, pad_token="<pad>", length=64)
    tokenize_catalogue(tok, [{"title": "red"}], cache_dir=tmp_path / "padded", progress=False)
    assert [p.name for p in (tmp_path / "padded").iterdir()] == [p.name for p in (tmp_path / "plain").iterdir()]


def test_byte_level_tokenizer_file_with_padding_gives_the_reference_ids(tmp_path):
    folder = padded_bpe_tokenizer_folder(tmp_path / "bpe", TINY_TOKENIZER_DIR)
    tok = RecformerTokenizer.from_pretrained(str(folder), tiny_config())
    assert tok.encode_item({"title": "red shoe", "brand": "b"}) == ([TITLE, RED, SHOE, BRAND, byte("b")], [1, 2, 2, 1, 2])
    assert tok([{"title": "red"}])["input_ids"] == [0, TITLE, RED]


def test_a_wordpiece_vocabulary_uses_its_own_special_tokens(tmp_path):
    for config_file in (True, False):  # named in tokenizer_config.json, or only RoBERTa's defaults
        folder = wordpiece_tokenizer_folder(tmp_path / f"wp-{config_file}", config=config_file)
        tok = RecformerTokenizer.from_pretrained(str(folder), tiny_config(vocab_size=len(WORDPIECE_VOCAB)))
        assert len(tok) == len(WORDPIECE_VOCAB)  # nothing added past the vocabulary
        assert (tok.bos_token, tok.eos_token, tok.sep_token, tok.cls_token) == ("[CLS]", "[SEP]", "[SEP]", "[CLS]")
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id, tok.unk_token_id) == (2, 3, 0, 4, 1)
        assert tok([{"title": "red"}])["input_ids"] == [WP["[CLS]"], WP["title"], WP["red"]]
        assert tok.padding([tok.encode([{"title": "red"}]), tok.encode([])])["input_ids"][1] == [2, 0, 0]
        check_tokenizer_fits(tok, tiny_config(vocab_size=len(WORDPIECE_VOCAB)))


def test_check_tokenizer_fits_refuses_ids_past_the_embedding_table(tmp_path):
    tok = RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), tiny_config())
    check_tokenizer_fits(tok, tiny_config(vocab_size=275))
    check_tokenizer_fits(tok, tiny_config(vocab_size=300))  # unused rows are harmless
    with pytest.raises(TokenizerError, match=r"^model: special tokens past the model's vocab_size 274: '<mask>' has id 274; "):
        check_tokenizer_fits(tok, tiny_config(vocab_size=274), "model")
    tok.add_tokens(["zzzz"])
    with pytest.raises(TokenizerError, match=r"the tokenizer has 276 tokens \(ids up to 275\) but the model's vocab_size is 275"):
        check_tokenizer_fits(tok, tiny_config(vocab_size=275))
    # a WordPiece folder loaded with RoBERTa's <s> forced on it: the new token lies past the table
    folder = wordpiece_tokenizer_folder(tmp_path / "wp")
    forced = RecformerTokenizer.from_pretrained(str(folder), bos_token="<s>")
    with pytest.raises(TokenizerError, match=r"'<s>' has id 13"):
        check_tokenizer_fits(forced, tiny_config(vocab_size=len(WORDPIECE_VOCAB)))


def test_a_folder_without_tokenizer_files_is_refused_in_one_line(tmp_path):
    tok = RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR))
    tok.save_pretrained(str(tmp_path / "saved"))
    (tmp_path / "saved" / "tokenizer.json").unlink()  # left: tokenizer_config.json
    with pytest.raises(TokenizerError, match=rf"^{re.escape(str(tmp_path / 'saved'))}: no tokenizer files \(expected "
                                             r"tokenizer.json, vocab.json or vocab.txt\)"):  # fmt: skip
        RecformerTokenizer.from_pretrained(str(tmp_path / "saved"))


def test_a_tokenizer_of_special_tokens_only_is_refused(tmp_path):
    """The 5-token tokenizer RobertaTokenizer builds when its vocabulary is empty."""
    folder = tmp_path / "empty-vocab"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "<mask>": 4}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(TokenizerError, match=r"the tokenizer has 5 tokens and encodes no text"):
        RecformerTokenizer.from_pretrained(str(folder))


def test_a_hub_id_offline_fails_at_once_naming_the_flag(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(TokenizerError) as error:
        RecformerTokenizer.from_pretrained("recformer-tests/not-cached-anywhere")
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert message.startswith("recformer-tests/not-cached-anywhere: not a local folder, and HF_HUB_OFFLINE=1 forbids")
    assert "pass --model_name_or_path with a local model folder" in message and "\n" not in message


def test_a_catalogue_whose_items_tokenize_alike_is_warned_about(caplog):
    tok = RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), tiny_config(max_attr_length=1))
    items = [{"title": f"shoe {i}"} for i in range(5)] + [{"brand": "b"}, {"red": "x"}]
    with caplog.at_level(logging.WARNING, logger="recformer.model.item_tokens"):
        tokenize_catalogue(tok, items, keys=[f"K{i}" for i in range(7)], progress=False)
    assert [r.getMessage() for r in caplog.records] == [
        f"5 of 7 items tokenize to the same 1 token ids (e.g. item 'K0': [{TITLE}]); check the tokenizer "
        "(padding, truncation, vocabulary) and the item texts"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recformer.model.item_tokens"):
        tokenize_catalogue(tok, items[3:], progress=False)  # 2 of 4 alike: not more than half
        tokenize_catalogue(RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), tiny_config()), items, progress=False)
    assert caplog.records == []


@pytest.mark.parametrize("chunk_tokens", [1, 3, 1 << 22])
def test_identical_items_counts_the_largest_group_of_equal_token_ids(chunk_tokens):
    from recformer.model.item_tokens import TokenizedItems

    def table(ids):
        return TokenizedItems.from_lists([(x, [1] * len(x)) for x in ids])

    rows = [[5, 6], [], [6, 5], [5, 6], [5], [], [5, 6, 0], [5, 6], [0]]
    assert table(rows).identical_items(chunk_tokens) == (3, 0)  # [5, 6] at rows 0, 3, 7; not [6, 5] or [5, 6, 0]
    assert table([[], [], [7]]).identical_items(chunk_tokens) == (2, 0)  # empty items alike
    assert table([[1], [2], [3]]).identical_items(chunk_tokens)[0] == 1
    assert table([]).identical_items(chunk_tokens) == (0, -1)
    rng = random.Random(chunk_tokens)
    for _ in range(20):  # against a plain count
        ids = [[rng.randrange(3) for _ in range(rng.randrange(4))] for _ in range(rng.randrange(1, 30))]
        count, row = table(ids).identical_items(chunk_tokens)
        assert count == max(Counter(map(tuple, ids)).values()) and ids.count(ids[row]) == count


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    """A model folder whose config has one embedding row fewer than its tokenizer (<mask> 274 has none), and
    the inputs every command needs."""
    from .finetune_fixtures import make_dataset, make_model_folder, make_pretrained_checkpoint
    from .pretrain_fixtures import write_corpus

    root = tmp_path_factory.mktemp("small-table")
    model = make_model_folder(root)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_size": 274}))
    return {"model": model, "ckpt": make_pretrained_checkpoint(root, vocab_size=274), "data": make_dataset(root),
            "corpus": write_corpus(root / "corpus", n_items=20, n_train=8, n_dev=4), "root": root}  # fmt: skip


def _finetune(a, out):
    from recformer.cli import finetune

    return finetune.main(["--pretrain_ckpt", str(a["ckpt"]), "--data_path", str(a["data"]), "--model_name_or_path",
                          str(a["model"]), "--output_dir", str(out), "--device", "cpu", "--num_train_epochs", "0",
                          "--no_progress"])  # fmt: skip


def _evaluate(a, out):
    from recformer.cli import evaluate

    return evaluate.main(["--ckpt", str(a["ckpt"]), "--data_path", str(a["data"]), "--model_name_or_path", str(a["model"]),
                          "--device", "cpu", "--no_progress", "--reencode_items"])  # fmt: skip


def _recommend(a, out):
    from recformer.cli import recommend

    histories = out.parent / "histories.jsonl"
    histories.write_text(json.dumps({"user": "u", "history": ["B000000001"]}) + "\n")
    return recommend.main(["--ckpt", str(a["ckpt"]), "--items", str(a["data"] / "meta_data.json"), "--model_name_or_path",
                           str(a["model"]), "--input", str(histories), "--output", str(out), "--device", "cpu",
                           "--no_progress"])  # fmt: skip


def _pretrain(a, out):
    pytest.importorskip("pytorch_lightning")
    from recformer.cli import pretrain

    from .pretrain_fixtures import TINY_FIELD_FLAGS

    c = a["corpus"]
    return pretrain.main(["--model_name_or_path", str(a["model"]), "--longformer_ckpt", str(a["ckpt"]), "--train_file",
                          str(c["train"]), "--dev_file", str(c["dev"]), "--item_attr_file", str(c["meta"]),
                          "--output_dir", str(out), "--device", "cpu", "--max_steps", "1", "--dataloader_num_workers",
                          "0", "--no_progress", *TINY_FIELD_FLAGS])  # fmt: skip


@pytest.mark.parametrize("command", [_finetune, _evaluate, _recommend, _pretrain], ids=lambda f: f.__name__[1:])
def test_every_command_refuses_a_tokenizer_with_ids_past_the_model_s_table(small_table, tmp_path, capsys, command):
    code = command(small_table, tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{small_table['model']}" in err
    assert "special tokens past the model's vocab_size 274: '<mask>' has id 274; use the tokenizer the model was trained with" in err


def test_the_recommender_refuses_a_tokenizer_with_ids_past_the_model_s_table(small_table):
    from recformer import Recommender

    with pytest.raises(TokenizerError, match=r"'<mask>' has id 274"):
        Recommender.from_pretrained(small_table["ckpt"], small_table["data"] / "meta_data.json", small_table["model"],
                                    device="cpu", progress=False)  # fmt: skip


def test_evaluate_on_a_model_folder_whose_tokenizer_json_was_deleted_stops_naming_the_flag(small_table, tmp_path, capsys,
                                                                                            monkeypatch):  # fmt: skip
    """The folder falls back to the default hub tokenizer, which offline is refused at once (no 5-token tokenizer)."""
    from recformer import RecformerModel
    from recformer.cli import evaluate

    from .finetune_fixtures import finetune_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "best_model"
    RecformerModel(finetune_config()).save_pretrained(folder)
    RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR)).save_pretrained(str(folder))
    (folder / "tokenizer.json").unlink()
    capsys.readouterr()
    start = time.perf_counter()
    code = evaluate.main(["--ckpt", str(folder), "--data_path", str(small_table["data"]), "--device", "cpu",
                          "--no_progress", "--reencode_items"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - start < 60
    assert err.startswith("error: allenai/longformer-base-4096: not a local folder, and HF_HUB_OFFLINE=1"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
