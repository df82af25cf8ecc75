"""Pretrain Recformer (MLM + item-item contrastive) with PyTorch Lightning.

The reference script's name and flags; the command is recformer/cli/pretrain.py (also installed as
`recformer-pretrain`). See `python lightning_pretrain.py --help`.
"""

import sys

from recformer.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
