"""Select and describe the pretraining items.

The reference script's path of `recformer-pretrain-meta`, with the same flags (see `--help`);
the command lives in recformer/cli/pretrain_meta.py.
"""

import sys

from recformer.cli.pretrain_meta import main

if __name__ == "__main__":
    sys.exit(main())
