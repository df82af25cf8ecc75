"""Turn a pretraining checkpoint into the released Recformer files.

The reference script's name and flags; the command is recformer/cli/convert_pretrain_ckpt.py (also installed as
`recformer-convert-pretrain-ckpt`). See `python convert_pretrain_ckpt.py --help`.
"""

import sys

from recformer.cli.convert_pretrain_ckpt import main

if __name__ == "__main__":
    sys.exit(main())
