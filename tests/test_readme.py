"""The README's notebook snippet runs as written, against a tiny local Longformer folder."""

import re
import shutil
from pathlib import Path

import torch
from transformers import LongformerConfig

from recformer import RecformerConfig, RecformerForPretraining

from .conftest import TINY_TOKENIZER_DIR

README = Path(__file__).resolve().parents[1] / "README.md"


def notebook_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Using released checkpoints in a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_notebook_snippet_runs(tmp_path, monkeypatch):
    folder = tmp_path / "longformer-tiny"
    lf = LongformerConfig(vocab_size=275, hidden_size=32, num_hidden_layers=12, num_attention_heads=4,
                          intermediate_size=37, max_position_embeddings=1030, layer_norm_eps=1e-5, type_vocab_size=1)
    lf.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TINY_TOKENIZER_DIR / name, folder)
    config = RecformerConfig.from_pretrained(folder)
    config.max_attr_num, config.max_attr_length, config.max_item_embeddings = 3, 32, 51
    config.attention_window, config.max_token_num = [64] * 12, 1024
    state = RecformerForPretraining(config).state_dict()
    monkeypatch.chdir(tmp_path)
    torch.save({k[len("longformer."):]: v for k, v in state.items() if k.startswith("longformer.")}, "recformer_ckpt.bin")
    torch.save(state, "recformer_seqrec_ckpt.bin")

    code = notebook_snippet().replace("'allenai/longformer-base-4096'", repr(str(folder)))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["out"].last_hidden_state.shape[0] == 2
    assert namespace["out"].pooler_output.shape == (2, 32)
    assert namespace["scores"].shape == (2, 3)
    assert torch.isfinite(namespace["loss"])
    assert not namespace["model"].training and not namespace["seqrec"].training
    assert not namespace["out"].pooler_output.requires_grad and not namespace["loss"].requires_grad

    # the snippet run again gives the same numbers (training mode would draw other dropout masks)
    again: dict = {}
    exec(compile(code, str(README), "exec"), again)
    assert torch.equal(again["out"].pooler_output, namespace["out"].pooler_output)
    assert torch.equal(again["scores"], namespace["scores"])
    # ...and it is eval() that makes them agree: the same model in training mode does not
    model, batch = namespace["model"], namespace["batch"]
    model.train()
    with torch.no_grad():
        first, second = model(**batch).pooler_output, model(**batch).pooler_output
    assert not torch.equal(first, second)
