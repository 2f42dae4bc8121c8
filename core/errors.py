"""The error hierarchy. Only the CLI turns these into exit codes and messages."""
from __future__ import annotations

import errno


class MobileExportError(Exception):
    """An expected failure: the message names what is at fault, the hint says what to do."""

    exit_code = 2

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(MobileExportError):
    """Bad model source, shape, images, config or flags: the user must change an input."""

    exit_code = 2


class ConverterError(MobileExportError):
    """A third-party converter or runtime failed on an input we considered valid."""

    exit_code = 3


class GateFailed(MobileExportError):
    """Every artifact was produced, but one or more failed a release gate (parity)."""

    exit_code = 1


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full_cause(error: BaseException) -> OSError | None:
    """The "no space left" OSError behind `error`, if any: wrappers (`raise X from None`) keep it as context."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def disk_full_error(where: object) -> InputError:
    return InputError(
        f"no space left on the disk holding {where}",
        hint="free some space there (or pass --out on another disk) and run the export again; "
        "the earlier artifacts and manifest were left as they were",
    )


def most_severe(errors: list[MobileExportError], summary: str) -> MobileExportError:
    """One error standing for several: a converter failure (3) outranks a bad input (2), which outranks a gate (1)."""
    worst = max(errors, key=lambda error: error.exit_code)
    return type(worst)(summary, hint="; ".join(dict.fromkeys(error.hint for error in errors if error.hint)))
