"""Finetune a pretrained Recformer on one processed dataset (two stages) and evaluate it.

The reference script's name and flags; the command is recformer/cli/finetune.py (also installed as
`recformer-finetune`). See `python finetune.py --help`.
"""

import sys

from recformer.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main())
