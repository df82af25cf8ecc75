"""Processing outputs are pinned byte for byte: a change of any output byte (order, spacing, a stats key)
must be deliberate. The golden folders in tests/fixtures/processed_golden were written by the processing
code of the first release; stats paths there read ``<TMP>`` in place of the test's temporary folder."""

from __future__ import annotations

from pathlib import Path

from recformer import amazon

from . import test_finetune_processing as finetune_case
from . import test_pretrain_processing as pretrain_case

GOLDEN = Path(__file__).parent / "fixtures" / "processed_golden"


def assert_same_bytes(folder: Path, golden: Path, tmp: Path, renames: dict[str, str] | None = None) -> None:
    """Every file of `folder` equals its golden file (`renames` maps an output name to a golden name)."""
    renames = renames or {}
    for path in folder.iterdir():
        expected = (golden / renames.get(path.name, path.name)).read_bytes()
        assert path.read_bytes().replace(str(tmp).encode(), b"<TMP>") == expected, path.name


def test_finetune_folder_bytes(tmp_path):
    reviews = finetune_case.write_gz(tmp_path / "Tiny_5.json.gz", finetune_case.REVIEW_LINES)
    meta = finetune_case.write_gz(tmp_path / "meta_Tiny.json.gz", finetune_case.META_LINES)
    out = tmp_path / "ft"
    amazon.process_finetune(reviews, meta, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (GOLDEN / "finetune").iterdir())
    assert_same_bytes(out, GOLDEN / "finetune", tmp_path)


def test_pretrain_folder_bytes(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, lines in pretrain_case.RAW.items():
        pretrain_case.write_gz(raw / name, lines)
    out = tmp_path / "pt"
    amazon.process_pretrain_meta(raw, raw, out, pretrain_case.TRAIN + pretrain_case.DEV, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["meta_data.json", "stats.json"]
    assert_same_bytes(out, GOLDEN / "pretrain", tmp_path, {"stats.json": "meta_step_stats.json"})
    amazon.process_pretrain_interactions(
        raw, out / "meta_data.json", out, pretrain_case.TRAIN, pretrain_case.DEV, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == ["dev.json", "meta_data.json", "stats.json", "train.json"]
    assert_same_bytes(out, GOLDEN / "pretrain", tmp_path)
