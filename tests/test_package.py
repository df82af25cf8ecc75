import subprocess
import sys
from pathlib import Path


def test_import_does_not_load_lightning_or_deepspeed():
    # recformer.train.pretraining and the pretraining command import Lightning only when a run starts
    code = (
        "import sys, recformer, recformer.train.pretraining, recformer.cli.pretrain\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'deepspeed')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api():
    import recformer

    for name in ("RecformerConfig", "RecformerModel", "RecformerForPretraining", "RecformerForSeqRec", "RecformerTokenizer"):
        assert hasattr(recformer, name)


def test_data_processing_import_is_light():
    """`recformer.data`, each of its modules and the processing commands import neither torch nor transformers."""
    import recformer.data

    folder = Path(recformer.data.__file__).parent
    modules = ["recformer.data"] + sorted(f"recformer.data.{p.stem}" for p in folder.glob("[!_]*.py"))
    assert len(modules) == 9  # the package and its eight modules: a new module is checked here too
    commands = ["recformer.cli.process_finetune", "recformer.cli.pretrain_meta", "recformer.cli.pretrain_interactions"]
    code = (
        f"import importlib, sys\nfor m in {modules + commands!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
