"""Command-line entry points (`[project.scripts]` in pyproject.toml; the top-level scripts are shims).

Each module has `build_parser()` and `main(argv=None) -> int`: parse, build library objects, call
one library function, print. Exit code 2 means bad input, named in one `error:` line.
"""
