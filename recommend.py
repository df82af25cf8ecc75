"""Recommend the next items for users' histories with any checkpoint.

The command is recformer/cli/recommend.py (also installed as `recformer-recommend`).
See `python recommend.py --help`.
"""

import sys

from recformer.cli.recommend import main

if __name__ == "__main__":
    sys.exit(main())
