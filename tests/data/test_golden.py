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


def assert_same_bytes(folder: Path, golden: Path, tmp: Path, names: list[str]) -> None:
    """The files `names` of `folder` equal their golden files (`tmp` reads ``<TMP>`` there)."""
    for name in names:
        expected = (golden / name).read_bytes()
        assert (folder / name).read_bytes().replace(str(tmp).encode(), b"<TMP>") == expected, name


def test_finetune_folder_bytes(finetune_raw, tmp_path):
    out = tmp_path / "ft"
    process_finetune(*finetune_raw, out, progress=False)
    step = FINETUNE.step
    names = sorted(f.name for f in (*step.data_files, step.stats))
    # The manifest records hashes of stats.json, whose input paths depend on the temporary folder.
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, step.manifest])
    assert sorted(p.name for p in (GOLDEN / "finetune").iterdir()) == names
    assert_same_bytes(out, GOLDEN / "finetune", tmp_path, names)


def test_pretrain_folder_bytes(pretrain_raw, tmp_path):
    out = tmp_path / "pt"
    meta_step, interaction_step = PRETRAIN.meta_step, PRETRAIN.interaction_step
    meta_names = sorted(f.name for f in (*meta_step.data_files, meta_step.stats))
    process_pretrain_meta(pretrain_raw, pretrain_raw, out, TRAIN + DEV, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([*meta_names, meta_step.manifest])
    assert_same_bytes(out, GOLDEN / "pretrain", tmp_path, meta_names)
    process_pretrain_interactions(
        pretrain_raw, out / PRETRAIN.meta_data.name, out, TRAIN, DEV, progress=False
    )
    names = sorted(f.name for f in (*interaction_step.data_files, interaction_step.stats))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*meta_names, meta_step.manifest, *names, interaction_step.manifest]
    )
    assert sorted(p.name for p in (GOLDEN / "pretrain").iterdir()) == sorted(meta_names + names)
    assert_same_bytes(out, GOLDEN / "pretrain", tmp_path, meta_names + names)
