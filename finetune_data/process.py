"""Build a finetuning folder from one Amazon 2018 category (or, with --format, RecBole atomic files or your
own CSV/TSV/JSON-lines tables).

The reference script's path of `recformer-process-finetune`, with the same flags (see `--help`);
the command lives in recformer/cli/process_finetune.py.
"""

import sys

from recformer.cli.process_finetune import main

if __name__ == "__main__":
    sys.exit(main())
