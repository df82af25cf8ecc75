import subprocess
import sys


def test_import_does_not_load_lightning_or_deepspeed():
    # recformer.pretraining and the pretraining command import Lightning only when a run starts
    code = (
        "import sys, recformer, recformer.pretraining, recformer.cli.pretrain\n"
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
    code = "import sys, recformer.amazon\nsys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
