"""Command-line parsers built from the argument dataclasses of `recformer.args`, and `--config` files.

`build_parser` turns a dataclass into an `argparse` parser (one flag per field, help with defaults), so
the flags and the API cannot drift. `parse_command_line` also reads `--config FILE` (JSON or YAML: flag
names without `--` as keys), whose values become the flags' defaults, so flags given on the command line
override the file. Like `args.py`, this imports neither torch nor transformers, so that every command
answers `--help` and argument errors at once; that is also why the parsers are plain argparse (importing
`transformers.hf_argparser` alone costs most of a second).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from recformer.defaults import REFERENCE_SCRIPT_VALUES
from recformer.errors import RecformerError

A = TypeVar("A")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description keeps its line breaks (the examples); each flag's help ends with its default.

    The default is left out where it says nothing: required flags, switches (`store_true`/`store_false`),
    a None default (the help text says what happens) and help that already states it ("default: ...").
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (action.required or default is None or default is argparse.SUPPRESS or action.nargs == 0
                or "default:" in help_text or "%(default)" in help_text):  # fmt: skip
            return help_text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{help_text} (default: {shown.replace('%', '%%')})"


def add_recformer_field_args(parser: argparse.ArgumentParser) -> None:
    """The Recformer field flags of every CLI; unset ones take a saved Recformer config's value or the
    reference scripts' value (3/32/51/64/1024)."""
    group = parser.add_argument_group("Recformer fields (default: a saved Recformer config's values, else the "
                                      "reference scripts' values in brackets)")  # fmt: skip
    group.add_argument("--max_attr_num", type=int, default=None, help="attributes kept per item [3]")
    group.add_argument("--max_attr_length", type=int, default=None, help="tokens per attribute [32]")
    group.add_argument("--max_item_embeddings", type=int, default=None, help="items per sequence + 1 [51]")
    group.add_argument("--attention_window", type=int, nargs="+", default=None, help="one window or one per layer [64]")
    group.add_argument("--max_token_num", type=int, default=None, help="tokens per sequence [1024]")


def _flag_type(annotation: Any) -> tuple[type, bool]:
    """(element type, is a list) of an `X`, `X | None`, `list[X]` or `list[X] | None` annotation."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the argument dataclass `cls` (see `flag`)."""
    hints = typing.get_type_hints(cls)
    recformer_fields = set()
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("recformer_field"):
            recformer_fields.add(f.name)
            continue
        kind, is_list = _flag_type(hints[f.name])
        name = meta.get("flag", f"--{f.name}")
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta.get("help") or None}
        if kind is bool:
            kwargs["action"] = "store_false" if name != f"--{f.name}" else "store_true"
        else:
            kwargs["type"] = meta.get("type", kind)
            if is_list:
                kwargs["nargs"] = "+"
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        else:
            kwargs["required"] = True
        parser.add_argument(name, **kwargs)
    if recformer_fields:
        if recformer_fields != set(REFERENCE_SCRIPT_VALUES):
            raise TypeError(f"{cls.__name__}: Recformer fields {sorted(recformer_fields)} != {list(REFERENCE_SCRIPT_VALUES)}")
        add_recformer_field_args(parser)


CONFIG_HELP = (
    "JSON (.json) or YAML (.yaml, .yml) file of flag values, keyed by the flag names without '--' (e.g. "
    "learning_rate: 1.0e-4); flags given on the command line override it. A finetuning or pretraining run's "
    "args.json is such a file"
)


class ConfigError(RecformerError, ValueError):
    """A --config file that cannot be used; the message is one line naming the file (and key)."""


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the argument dataclass `cls`, and `--config`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_dataclass_args(parser, cls)
    parser.add_argument("--config", metavar="FILE", default=None, help=CONFIG_HELP)
    return parser


def _read_mapping(path: Path) -> dict[str, Any]:
    """The mapping a .json / .yaml / .yml file holds (ConfigError naming the file otherwise)."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"{path}: --config takes a .json, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    if suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
    else:
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: must hold a mapping of flag names to values, not a {type(values).__name__}")
    return values


def _config_value(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    """`value` of `key` as the flag's own parsing makes it (its type, choices, one value or a list)."""
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {key} must be true or false, got {value!r}")
        return value
    many = action.nargs == "+"
    if isinstance(value, list) and not many:
        raise ConfigError(f"{path}: {key} takes one value, got a list")
    items = value if isinstance(value, list) else [value]
    if isinstance(value, dict) or any(isinstance(v, (dict, list)) for v in items):
        raise ConfigError(f"{path}: {key} must be a value or a list of values, got {value!r}")
    convert = action.type or str
    try:  # as if given on the command line: a YAML `5e-5` (a string to YAML) is a float here
        out = [convert(v if isinstance(v, str) else json.dumps(v) if isinstance(v, bool) else str(v)) for v in items]
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        raise ConfigError(f"{path}: {key}: {e}") from None
    if action.choices is not None:
        for v in out:
            if v not in action.choices:
                raise ConfigError(f"{path}: {key} must be one of {', '.join(map(str, action.choices))}, got {v!r}")
    return out if many else out[0]


def read_config(path: str | Path, cls: type, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The field values a --config file gives the argument dataclass `cls`, each parsed as its flag
    (`parser`'s) parses it.

    Raises:
        ConfigError: the file is missing, unreadable or not a mapping, has a key that is not a field of
            `cls` (the first named), or a value its flag would refuse; one line naming the file.
    """
    path = Path(path)
    values = _read_mapping(path)
    names = {f.name for f in dataclasses.fields(cls)}
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    for key in values:
        if key not in names:
            raise ConfigError(f"{path}: unknown key {key!r}: not a flag of this command (keys are flag names without '--')")
    return {key: _config_value(actions[key], key, value, path) for key, value in values.items()}


def parse_command_line(cls: type[A], parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> A:
    """Parse `argv` (default: the command line) with `parser` (from `build_parser(cls)`) into an instance of
    `cls`: the values of a `--config` file, then the flags given, which override them.

    A bad config file exits with status 2 and one line naming it (`ConfigError`); flag errors are
    argparse's.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        try:
            values = read_config(known.config, cls, parser)
        except ConfigError as e:
            parser.exit(2, f"error: {e}\n")
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False  # the file gives it
    namespace = vars(parser.parse_args(argv))
    namespace.pop("config", None)
    return cls(**namespace)


def parse_args(cls: type[A], argv: Sequence[str] | None = None, description: str | None = None) -> A:
    """Parse `argv` (default: the command line, `--config` included) into an instance of the argument
    dataclass `cls`."""
    return parse_command_line(cls, build_parser(cls, description), argv)
