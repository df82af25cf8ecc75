"""Markdown table of finetuning runs' test metrics, a popularity row, and plots of their training curves.

The command is recformer/cli/report.py (also installed as `recformer-report`).
See `python report.py --help`.
"""

import sys

from recformer.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
