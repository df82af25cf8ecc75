"""Build the Recformer pretraining start point from a Longformer masked-LM checkpoint.

The reference script's name and flags; the command is recformer/cli/save_longformer_ckpt.py (also installed as
`recformer-save-longformer-ckpt`). See `python save_longformer_ckpt.py --help`.
"""

import sys

from recformer.cli.save_longformer_ckpt import main

if __name__ == "__main__":
    sys.exit(main())
