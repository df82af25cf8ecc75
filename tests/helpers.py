"""Small helpers shared by the test modules."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_cli(path: Path) -> ModuleType:
    """Import a script file as a module, to call its main() (or other functions) in this process."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_gz(path: Path, lines: list[str]) -> Path:
    """Write `lines`, each ended by a newline, gzipped with header time 0 (bytes depend on the lines only)."""
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0))
    return path
