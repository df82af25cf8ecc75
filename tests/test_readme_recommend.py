"""The README's "Recommend for your users" notebook snippet runs as written, on a tiny local model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import recformer.runtime as runtime_module
from recformer import Recommender

from .finetune_fixtures import make_dataset, make_model_folder, make_pretrained_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet() -> str:
    section = README.read_text(encoding="utf-8").split("## Recommend for your users", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_recommend_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime_module, "DEFAULT_MODEL", str(make_model_folder(tmp_path / "models")))
    meta = json.loads((make_dataset(tmp_path / "data") / "meta_data.json").read_text())
    meta["B00005N5PF"], meta["B0000DBJ2K"] = meta.pop("B000000000"), meta.pop("B000000001")
    (tmp_path / "finetune_data" / "Scientific").mkdir(parents=True)
    (tmp_path / "finetune_data" / "Scientific" / "meta_data.json").write_text(json.dumps(meta))
    (tmp_path / "pretrain_ckpt").mkdir()
    shutil.copy(make_pretrained_checkpoint(tmp_path), tmp_path / "pretrain_ckpt" / "recformer_seqrec_ckpt.bin")
    monkeypatch.chdir(tmp_path)

    namespace: dict = {}
    exec(compile(snippet(), str(README), "exec"), namespace)
    recs = namespace["recs"]
    assert len(recs) == 1 and len(recs[0]) == 5 and "B00005N5PF" not in [i for i, _ in recs[0]]
    loaded = Recommender.load(tmp_path / "index" / "scientific", device="cpu", progress=False)
    assert len(loaded) == 31 and loaded.ids[-1] == "NEW-1"
