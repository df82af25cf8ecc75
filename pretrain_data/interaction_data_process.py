"""Build the pretraining sequences.

The reference script's path of `recformer-pretrain-interactions`, with the same flags (see `--help`);
the command lives in recformer/cli/pretrain_interactions.py.
"""

import sys

from recformer.cli.pretrain_interactions import main

if __name__ == "__main__":
    sys.exit(main())
