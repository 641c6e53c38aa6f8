"""Command-line parsers generated from configuration dataclasses.

Every script describes its options once, as a dataclass whose fields carry a `help` text in
their metadata. `build_parser` turns the fields into argparse flags (types, choices and
defaults from the annotations) and adds `--config FILE.yaml`; `parse_config` applies the
YAML file first and the explicit flags over it, then constructs the dataclass (whose
`__post_init__` validates values).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

ConfigT = TypeVar("ConfigT")


def config_field(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002
    """A dataclass field with a help text for the generated command line."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs
        )
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def plain(value: Any) -> Any:
    """`value` with Paths as strings and tuples as lists (YAML and JSON types only)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def config_values(config: Any) -> dict[str, Any]:
    """Every field of a config dataclass instance as plain YAML/JSON types."""
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text_number_hint(value: Any, whole: bool = False) -> str:
    """For text that reads as a number (YAML takes `1e-3` as a string): how to write it."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if whole and number.is_integer():
        return f" (write {int(number)}, without quotes)"
    return f" (YAML reads {value} as text: write {number!r})"


def type_problem(value: Any, annotation: Any) -> str | None:
    """Why `value` does not fit a field annotated `annotation` (None if it does)."""
    inner, optional = strip_optional(annotation)
    if value is None:
        return None if optional else "must not be null"
    origin = typing.get_origin(inner)
    if origin is Literal:
        choices = typing.get_args(inner)
        return None if value in choices else f"must be one of {', '.join(map(str, choices))}"
    if inner is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return None
        return "must be a whole number" + text_number_hint(value, whole=True)
    if inner is float or set(typing.get_args(inner)) == {int, float}:
        return None if is_number(value) else "must be a number" + text_number_hint(value)
    if inner is str:
        return None if isinstance(value, str) else "must be text"
    if inner is Path:
        return None if isinstance(value, (str, Path)) else "must be a path"
    if dict in (origin, inner):
        return None if isinstance(value, Mapping) else "must be a mapping"
    if list in (origin, inner):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        (item,) = typing.get_args(inner) or (Any,)
        bad = [v for v in value if item is not Any and type_problem(v, item)]
        return f"has item(s) {bad} that {type_problem(bad[0], item)}" if bad else None
    return None


def check_field_types(config: Any) -> None:
    """ValueError naming every field of a config dataclass whose value has the wrong type
    (flags are typed by argparse, but YAML files and Python callers give raw values)."""
    hints = _hints(type(config))
    problems = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        problem = type_problem(value, hints[field.name])
        if problem:
            problems.append(f"{field.name}: {value!r} {problem}")
    if problems:
        raise ValueError("; ".join(problems))


def _hints(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def strip_optional(annotation: Any) -> tuple[Any, bool]:
    """Return (inner type, whether None is allowed) for `X | None` annotations."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _yaml_value(text: str) -> Any:
    """Parse a structured flag value (a list or mapping) written as YAML or JSON."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"not valid YAML/JSON: {text!r} ({error})") from error


def _none_or(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in {"none", "null"} else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _argument_options(annotation: Any) -> dict[str, Any]:
    """argparse keyword arguments (type, choices, action) for one field annotation."""
    inner, optional = strip_optional(annotation)
    origin = typing.get_origin(inner)
    if inner is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        choices = list(typing.get_args(inner))
        return {
            "type": _none_or(type(choices[0])) if optional else type(choices[0]),
            "choices": choices + ([None] if optional else []),
        }
    simple = {int: int, float: float, str: str, Path: Path}
    if origin is list and typing.get_args(inner) and typing.get_args(inner)[0] in simple:
        return {"type": simple[typing.get_args(inner)[0]], "nargs": "+"}  # --tiles Tile5 Tile9
    if origin in (dict, list, tuple) or inner in (dict, list, tuple) or inner is Any:
        return {"type": _yaml_value, "metavar": "YAML"}
    convert = simple.get(inner)
    if convert is None:
        convert = _yaml_value
    return {"type": _none_or(convert) if optional else convert}


def _shown(default: Any) -> str:
    return str(default) if isinstance(default, Path) else repr(default)


def _help_text(text: str, default: Any) -> str:
    """The field's help with its default, unless the help already says what the default is,
    ready for argparse (a literal "%" doubled)."""
    if "default" not in text and "None:" not in text:
        text = f"{text} (default: {_shown(default)})"
    return text.replace("%", "%%")  # argparse %-formats help texts: "95 %" is literal


def closest(name: str, known: Sequence[str]) -> str:
    """ " (did you mean X?)" for the closest of `known` to a mistyped `name`, else ""."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


class OptionParser(argparse.ArgumentParser):
    """argparse with errors of one line: the mistake, the closest option, how to see them all
    (exit status 2), instead of the whole usage."""

    def error(self, message: str) -> typing.NoReturn:
        options = [o for action in self._actions for o in action.option_strings]
        hints = []
        if message.startswith("unrecognized arguments:"):
            for word in message.split(":", 1)[1].split():
                if word.startswith("-"):
                    hints.append(closest(word.split("=")[0], options))
        self.exit(2, f"{self.prog}: error: {message}{''.join(hints)} (--help lists every option)\n")


def build_parser(config_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per dataclass field, plus `--config FILE.yaml`."""
    parser = OptionParser(
        description=description or (config_cls.__doc__ or "").strip().splitlines()[0],
        formatter_class=argparse.HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML file of option values; flags given on the command line override it",
    )
    add_config_arguments(parser, config_cls)
    return parser


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_cls: type,
    title: str | None = None,
    description: str | None = None,
    exclude: frozenset[str] = frozenset(),
) -> None:
    """Add one flag per field of `config_cls` (default=SUPPRESS: only given flags are parsed).

    With a `title`, the flags form their own group in `--help` (a second dataclass's options);
    fields in `exclude` get no flag (another config of the command defines them).
    """
    target = parser.add_argument_group(title, description) if title else parser
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if field.name in exclude:
            continue
        default = (
            field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        )
        target.add_argument(
            f"--{field.name}",
            dest=field.name,
            default=argparse.SUPPRESS,
            help=_help_text(field.metadata.get("help", ""), default),
            **_argument_options(hints[field.name]),
        )


def load_yaml_config(path: Path, config_cls: type) -> dict[str, Any]:
    """Read a YAML file of option values; exit status 2 naming every problem of the file at
    once (unknown names, with the closest known one, and values of the wrong type)."""

    def fail(message: str) -> typing.NoReturn:
        print(f"error: --config {path}: {message}", file=sys.stderr)
        raise SystemExit(2)

    if not path.is_file():
        fail("no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        fail(f"not valid YAML ({' '.join(str(error).split())})")
    if not isinstance(values, dict):
        fail("expected a mapping of option: value")
    hints = _hints(config_cls)
    problems = []
    for name, value in values.items():
        if name not in hints:
            problems.append(f"unknown option {name!r}{closest(str(name), list(hints))}")
        elif (problem := type_problem(value, hints[name])) is not None:
            problems.append(f"{name}: {value!r} {problem}")
    if problems:
        fail("; ".join(problems) + " (--help lists every option)")
    return values


def one_line_warnings() -> None:
    """Print esd's own warnings as `warning: <message>`, one line, not as Python's
    `file:line: Category: message` with the line of code under it (others unchanged)."""
    default = warnings.formatwarning
    if getattr(default, "esd", False):
        return

    def formatted(message, category, filename, lineno, line=None) -> str:
        if category.__module__.startswith("src."):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    formatted.esd = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatted


def parse_values(
    parser: argparse.ArgumentParser, config_cls: type, argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """The option values of `--config` YAML (names checked against `config_cls`) and flags.

    Flags given on the command line override the file; options given nowhere are absent.
    """
    one_line_warnings()
    namespace = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    yaml_path = namespace.pop("config")
    values = load_yaml_config(yaml_path, config_cls) if yaml_path else {}
    values.update(namespace)
    return values


def construct(parser: argparse.ArgumentParser, config_cls: type[ConfigT], values: dict) -> ConfigT:
    """`config_cls(**values)`; invalid values exit with status 2 and the validation message."""
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
        raise  # unreachable: parser.exit raises SystemExit


def parse_config(
    config_cls: type[ConfigT],
    argv: Sequence[str] | None = None,
    description: str | None = None,
) -> ConfigT:
    """Build `config_cls` from `--config` YAML and command-line flags (flags win).

    Invalid values raise SystemExit with the dataclass's own validation message.
    """
    parser = build_parser(config_cls, description)
    return construct(parser, config_cls, parse_values(parser, config_cls, argv))
