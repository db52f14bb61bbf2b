"""What the scripts in train/, eval/, data/ and bench/ share: parsing, one-line errors, the exit code.

    from mmreward.cli import ScriptParser, run

    def main(argv=None):
        (args,) = ScriptParser([MyArguments], __doc__).parse(argv)
        ...  # heavy imports here, after parsing: `--help` stays fast

    if __name__ == "__main__":
        run(main)

`ScriptParser` is TRL's dataclass parser (YAML `--config`, flags override it) with the script's
docstring and `--config` in its help, no prefix matching of flags, and every mistake raised as a
one-line `UsageError` (an unknown flag names the closest known one); `ArgParser` does the same for
plain argparse scripts. `run` prints the project's
own errors (`mmreward.errors.MmrewardError`) as `error: <message>` and exits with 2; with `--debug`
they keep their traceback. Anything else is a bug and keeps its traceback anyway.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from trl import TrlParser

from mmreward.errors import MmrewardError, UsageError

EXIT_USAGE = 2
DEBUG_FLAG = "--debug"


def one_line(message: str) -> str:
    """A message on one line (inner line breaks become '; ')."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


class ScriptParser(TrlParser):
    """TRL's dataclass parser for a script: `--config` YAML, the docstring as help, one-line errors.

    dataclass_types: the settings dataclasses (one field per flag). doc: the script's docstring.
    """

    def __init__(self, dataclass_types: Iterable[type], doc: str | None = None):
        super().__init__(list(dataclass_types), description=doc,
                         formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        # Both are taken out of the arguments before parsing; they are here for --help only.
        self.add_argument("--config", default=argparse.SUPPRESS, metavar="YAML",
                          help="settings from a YAML file (any option below); flags override them")
        self.add_argument(DEBUG_FLAG, action="store_true", default=argparse.SUPPRESS,
                          help="show the full traceback of an error")

    def error(self, message: str) -> None:  # argparse's own errors: bad values, missing arguments
        raise UsageError(one_line(message))

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        """The dataclasses filled from `--config` and the flags of `argv` (default: the command line)."""
        args = [a for a in (sys.argv[1:] if argv is None else argv) if a != DEBUG_FLAG]
        if "--config" in args:
            at = args.index("--config")
            if at + 1 >= len(args):
                raise UsageError("--config needs a YAML file")
            if not Path(args[at + 1]).is_file():
                raise UsageError(f"--config {args[at + 1]}: no such file")
        try:
            return self.parse_args_and_config(args)
        except ValueError as err:  # unknown flags or config keys, and the dataclasses' own checks
            raise UsageError(self._explain(str(err))) from err

    def _explain(self, message: str) -> str:
        unknown = re.search(r"not used by the HfArgumentParser: (\[.*\])", message)
        if unknown:
            flags = [a for a in re.findall(r"'([^']*)'", unknown.group(1)) if a.startswith("-")]
            return "; ".join(self._unknown(flag) for flag in flags) or one_line(message)
        from_config = re.search(r"Unknown arguments from config file: (\[.*\])", message)
        if from_config:
            keys = [k.lstrip("-") for k in re.findall(r"'([^']*)'", from_config.group(1)) if k.startswith("-")]
            return "; ".join(self._unknown("--" + key, "setting") for key in keys)
        return one_line(message)

    def _unknown(self, flag: str, what: str = "option") -> str:
        name = flag.split("=", 1)[0]
        close = difflib.get_close_matches(name, [s for s in self._option_string_actions if s.startswith("--")], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown {what} {name}{hint}"


class ArgParser(argparse.ArgumentParser):
    """A plain argparse parser for scripts without settings dataclasses (bench/, data/): the docstring as
    help, no prefix matching, errors as one-line `UsageError`s, `--debug` accepted."""

    def __init__(self, doc: str | None = None, **kwargs: Any):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                         **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error")

    def error(self, message: str) -> None:
        raise UsageError(one_line(message))


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """Run a script's `main(argv)` and exit: 0 on success, 2 with one line for the project's own errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    try:
        main(args)
    except MmrewardError as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(0)


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
