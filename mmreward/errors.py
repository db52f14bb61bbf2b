"""The base of mmreward's own errors.

Every error class the project defines for a problem with what the user gave it (a file, a record, a
setting, a checkpoint, an output folder) derives from `MmrewardError`, besides its usual base
(`ValueError`, `RuntimeError`, ...). Their messages name the file, record, flag or setting at fault,
so the scripts print them as one line (`mmreward.cli.run`); anything else is a bug and keeps its
traceback.
"""


class MmrewardError(Exception):
    """A problem with the user's input, named in the message (see the module docstring)."""


class UsageError(MmrewardError, ValueError):
    """A bad command line or settings file: an unknown or misspelled flag, a bad value, a missing setting."""


class MissingInputError(MmrewardError, FileNotFoundError):
    """A file, folder or model the user named does not exist (or is not what it should be)."""


class UnknownNameError(MmrewardError, KeyError):
    """A name that is not registered (a benchmark, a pose, ...); the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
