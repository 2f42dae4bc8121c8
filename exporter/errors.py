"""The error hierarchy. Only the CLI turns these into exit codes and messages."""
from __future__ import annotations


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

