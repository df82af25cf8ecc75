"""Evaluate any checkpoint on a processed dataset folder without training.

The command is recformer/cli/evaluate.py (also installed as `recformer-evaluate`).
See `python evaluate.py --help`.
"""

import sys

from recformer.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
