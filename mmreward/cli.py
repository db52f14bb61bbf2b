"""What the scripts in train/, eval/, data/ and bench/ share: parsing, one-line errors, the exit code.

    from mmreward.cli import ScriptParser, run

    def main(argv=None):
        (args,) = ScriptParser([MyArguments], __doc__).parse(argv)
        ...  # heavy imports here, after parsing: `--help` stays fast

    if __name__ == "__main__":
        run(main)

`ScriptParser` reads the flags of a script's settings dataclasses and a YAML `--config` (flags
override it), as TRL's `TrlParser` does, but without importing TRL or transformers (they take
seconds); its help shows the script's docstring and `--config`; no flag is matched by prefix; and
every mistake is a one-line `UsageError` (an unknown flag names the closest known one).
`ArgParser` does the same for plain argparse scripts. `parse_with_trl` serves the scripts whose settings include
TRL's `SFTConfig` / `GRPOConfig`: their `--help` comes from the script's own dataclasses without importing TRL,
and every other command line is read by TRL's own parser with the same one-line errors. `run` prints the project's
own errors (`mmreward.errors.MmrewardError`) as `error: <message>` and exits with 2; with `--debug`
they keep their traceback. Anything else is a bug and keeps its traceback anyway.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mmreward.errors import MmrewardError, UsageError

EXIT_USAGE = 2
DEBUG_FLAG = "--debug"


def one_line(message: str) -> str:
    """A message on one line (inner line breaks become '; ')."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _to_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class ScriptParser(argparse.ArgumentParser):
    """A script's flags from its settings dataclasses (one flag per field, `--name` and `--name-with-dashes`),
    with a YAML `--config` whose settings the flags override, the docstring as help and one-line errors.

    Field types: str, int, float, bool (`--flag`, `--flag false`, `--no_flag`), list[...] (several values),
    `X | None`, and mappings given as JSON text on the command line (`dict | str`). It reads the same
    command lines and YAML files as TRL's `TrlParser` without importing TRL or transformers, so `--help`
    answers at once.
    """

    def __init__(self, dataclass_types: Iterable[type], doc: str | None = None, epilog: str | None = None):
        super().__init__(description=doc, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                         allow_abbrev=False)
        self.dataclass_types = list(dataclass_types)
        for dtype in self.dataclass_types:
            hints = typing.get_type_hints(dtype)
            group = self.add_argument_group(dtype.__name__, (dtype.__doc__ or "").strip().split("\n")[0])
            for spec in dataclasses.fields(dtype):
                if spec.init:
                    self._add_field(group, spec, hints[spec.name])
        self.add_argument("--config", metavar="YAML", help="settings from a YAML file (any option above); flags "
                                                           "override them")
        self.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error")

    def _add_field(self, group: Any, spec: dataclasses.Field, annotation: Any) -> None:
        names = [f"--{spec.name}"] + ([f"--{spec.name.replace('_', '-')}"] if "_" in spec.name else [])
        kwargs: dict[str, Any] = {"dest": spec.name, "help": spec.metadata.get("help")}
        kinds = [t for t in typing.get_args(annotation) if t is not type(None)] if _is_union(annotation) else [annotation]
        kind = kinds[0] if len(kinds) == 1 else str  # e.g. dict | str: JSON text on the command line
        if spec.default is not dataclasses.MISSING:
            kwargs["default"] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            kwargs["default"] = spec.default_factory()
        else:
            kwargs["required"] = True
        if kind is bool:
            kwargs.update(type=_to_bool, nargs="?", const=True, metavar="true|false")
            if kwargs.get("default") is True:
                group.add_argument(f"--no_{spec.name}", dest=spec.name, action="store_false",
                                   help=f"the same as --{spec.name} false")
        elif typing.get_origin(kind) is list:
            kwargs.update(nargs="+", type=(typing.get_args(kind) or (str,))[0])
        else:
            kwargs["type"] = kind
        group.add_argument(*names, **kwargs)

    def error(self, message: str) -> None:  # argparse's own errors: bad values, missing arguments
        raise UsageError(one_line(message))

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        """The dataclasses filled from `--config` and the flags of `argv` (default: the command line)."""
        args = [a for a in (sys.argv[1:] if argv is None else argv) if a != DEBUG_FLAG]
        if "--config" in args:
            at = args.index("--config")
            if at + 1 >= len(args):
                raise UsageError("--config needs a YAML file")
            self._apply_config(args[at + 1])
            del args[at:at + 2]
        reject_unknown_flags(self, args)
        namespace, unknown = self.parse_known_args(args)
        flags = [a for a in unknown if a.startswith("-")]
        if unknown:
            raise UsageError("; ".join(self._unknown(flag) for flag in flags) or f"unexpected arguments {unknown}")
        values = vars(namespace)
        built = []
        for dtype in self.dataclass_types:
            fields = {f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init}
            try:
                built.append(dtype(**fields))
            except (TypeError, ValueError) as err:  # the dataclasses' own checks
                raise UsageError(one_line(err)) from err
        return tuple(built)

    def _apply_config(self, path: str) -> None:
        config = self._read_config(path)
        dests = {a.dest for a in self._actions if a.option_strings}
        unknown = [key for key in config if key not in dests or key in ("config", "debug")]
        if unknown:
            raise UsageError(f"--config {path}: " + "; ".join(self._unknown("--" + str(k), "setting") for k in unknown))
        # Every action of a setting takes the file's value: a bool that defaults to true has two (--flag and
        # --no_flag), and argparse fills the namespace from the first one's default.
        for action in self._actions:
            if action.option_strings and action.dest in config:
                action.default = config[action.dest]
                action.required = False

    @staticmethod
    def _read_config(path: str) -> dict:
        """The settings of a YAML `--config` file (a mapping), or a one-line UsageError."""
        import yaml

        if not Path(path).is_file():
            raise UsageError(f"--config {path}: no such file")
        try:
            config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise UsageError(f"--config {path}: not valid YAML ({one_line(err)})") from err
        if not isinstance(config, dict):
            raise UsageError(f"--config {path}: must hold a mapping of settings")
        return config

    def _unknown(self, flag: str, what: str = "option") -> str:
        return unknown_flag(self, flag, what)


def reject_unknown_flags(parser: argparse.ArgumentParser, args: Sequence[str]) -> None:
    """Raise a `UsageError` naming every unknown `--flag` of `args` (before argparse complains of a missing one)."""
    unknown = [a for a in args if a.startswith("--") and a.split("=", 1)[0] not in parser._option_string_actions]
    if unknown:
        raise UsageError("; ".join(unknown_flag(parser, flag) for flag in unknown))


def unknown_flag(parser: argparse.ArgumentParser, flag: str, what: str = "option") -> str:
    """'unknown option --flag', with the closest known flag when one is close."""
    name = flag.split("=", 1)[0]
    close = difflib.get_close_matches(name, [s for s in parser._option_string_actions if s.startswith("--")], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown {what} {name}{hint}"


def parse_with_trl(dataclass_types: Sequence[type], trl_config: str, doc: str | None,
                   argv: Sequence[str] | None = None, common: Sequence[str] = ()) -> tuple[Any, ...]:
    """The script's dataclasses and TRL's `trl_config` (`"SFTConfig"`, `"GRPOConfig"`) filled from `--config` and
    the flags of `argv`, read by TRL's `TrlParser` without prefix matching and with one-line `UsageError`s.

    `--help` is answered by a `ScriptParser` over the script's own dataclasses, without importing TRL (seconds);
    its epilog says that every field of `trl_config` is accepted too and names the `common` ones.
    """
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != DEBUG_FLAG]
    if "-h" in args or "--help" in args:
        named = ", ".join(f"--{name}" for name in common)
        epilog = textwrap.fill(f"Every field of TRL's {trl_config} is accepted as well, on the command line and in "
                               f"--config" + (f" (for example {named})" if named else "")
                               + f"; python -c \"import trl; help(trl.{trl_config})\" lists them.", width=100)
        ScriptParser(dataclass_types, doc, epilog).parse(["--help"])  # prints the help and exits
    config_path, config = None, {}
    if "--config" in args:
        at = args.index("--config")
        if at + 1 >= len(args):
            raise UsageError("--config needs a YAML file")
        config_path = args[at + 1]
        config = ScriptParser._read_config(config_path)  # a missing or malformed file: one line, before TRL loads

    import trl

    class Parser(trl.TrlParser):
        def error(self, message: str) -> None:
            raise UsageError(one_line(message))

    parser = Parser((*dataclass_types, getattr(trl, trl_config)), allow_abbrev=False)
    # Unknown names first: building the dataclasses runs their checks, whose complaints would hide a typo.
    known = parser._option_string_actions
    dests = {action.dest for action in parser._actions} | {"env"}  # TRL's config files may set environment variables
    problems = [f"--config {config_path}: " + unknown_flag(parser, f"--{key}", "setting")
                for key in config if key not in dests]
    problems += [unknown_flag(parser, arg) for arg in args
                 if arg.startswith("--") and arg != "--config" and arg.split("=", 1)[0] not in known]
    if problems:
        raise UsageError("; ".join(problems))
    try:
        *parsed, from_config, from_flags = parser.parse_args_and_config(
            args, return_remaining_strings=True, separate_remaining_strings=True)
    except ValueError as err:  # the dataclasses' own checks (TrainingArguments.__post_init__, ...)
        raise UsageError(one_line(err)) from err
    if from_config or from_flags:  # what the checks above let through (e.g. a stray value)
        raise UsageError(f"unexpected arguments {[*from_config, *from_flags]}")
    return tuple(parsed)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


class ArgParser(argparse.ArgumentParser):
    """A plain argparse parser for scripts without settings dataclasses (bench/, data/): the docstring as
    help, no prefix matching, errors as one-line `UsageError`s, `--debug` accepted."""

    def __init__(self, doc: str | None = None, **kwargs: Any):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                         **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error")

    def error(self, message: str) -> None:
        raise UsageError(one_line(message))

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        reject_unknown_flags(self, sys.argv[1:] if args is None else args)
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flags = [a for a in unknown if a.startswith("-")]
            raise UsageError("; ".join(unknown_flag(self, f) for f in flags) or f"unexpected arguments {unknown}")
        return parsed


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """Run a script's `main(argv)` and exit: with the int `main` returns (0 for anything else), or with 2 and
    one line for the project's own errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    try:
        code = main(args)
    except MmrewardError as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)  # metrics, paths: success


def module_names(package: str, exclude: Iterable[str] = ()) -> list[str]:
    """The module names of a package's folder, found without importing the package (fast `--help`)."""
    import importlib.util
    import pkgutil

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package} is not a package")
    skip = set(exclude)
    return sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)
                  if not m.name.startswith("_") and m.name not in skip)
