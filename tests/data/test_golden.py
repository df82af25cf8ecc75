"""Processing outputs are pinned byte for byte: a change of any output byte (order, spacing, a stats key)
must be deliberate. The golden folders in tests/fixtures/processed_golden were written by the processing
code of the first release; stats paths there read ``<TMP>`` in place of the test's temporary folder."""

from __future__ import annotations

from pathlib import Path

from recformer.data.finetune_writer import process_finetune
from recformer.data.formats import FINETUNE, PRETRAIN
from recformer.data.pretrain_writer import process_pretrain_interactions, process_pretrain_meta

from .pretrain_case import DEV, TRAIN

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "processed_golden"


def assert_same_bytes(folder: Path, golden: Path, tmp: Path, renames: dict[str, str] | None = None) -> None:
    """Every file of `folder` equals its golden file (`renames` maps an output name to a golden name)."""
    renames = renames or {}
    for path in folder.iterdir():
        expected = (golden / renames.get(path.name, path.name)).read_bytes()
        assert path.read_bytes().replace(str(tmp).encode(), b"<TMP>") == expected, path.name


def test_finetune_folder_bytes(finetune_raw, tmp_path):
    out = tmp_path / "ft"
    process_finetune(*finetune_raw, out, progress=False)
    expected_names = sorted(f.name for f in (*FINETUNE.data_files, FINETUNE.stats))
    assert sorted(p.name for p in out.iterdir()) == expected_names
    assert sorted(p.name for p in (GOLDEN / "finetune").iterdir()) == expected_names
    assert_same_bytes(out, GOLDEN / "finetune", tmp_path)


def test_pretrain_folder_bytes(pretrain_raw, tmp_path):
    out = tmp_path / "pt"
    process_pretrain_meta(pretrain_raw, pretrain_raw, out, TRAIN + DEV, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([PRETRAIN.meta_data.name, PRETRAIN.stats.name])
    assert_same_bytes(out, GOLDEN / "pretrain", tmp_path, {PRETRAIN.stats.name: "meta_step_stats.json"})
    process_pretrain_interactions(
        pretrain_raw, out / PRETRAIN.meta_data.name, out, TRAIN, DEV, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f.name for f in (PRETRAIN.meta_data, PRETRAIN.train, PRETRAIN.dev, PRETRAIN.stats)
    )
    assert_same_bytes(out, GOLDEN / "pretrain", tmp_path)
