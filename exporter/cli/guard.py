"""What every mobile-export command shares: the exit codes, and the one wrapper that turns errors into them."""
from __future__ import annotations

import contextlib
import signal
import traceback

import click

from core.errors import MobileExportError

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_CONVERTER = 0, 1, 2, 3


def echo_err(line: str) -> None:
    click.echo(line, err=True)


@contextlib.contextmanager
def terminate_like_ctrl_c():
    """SIGTERM (a CI job cancelled, `kill`) stops the export like Ctrl-C: converters stopped, staging removed."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def guarded(run, debug: bool) -> int:
    try:
        return run()
    except MobileExportError as error:
        if debug:
            traceback.print_exc()
        echo_err(f"error: {error.message}")
        if error.hint:
            echo_err(f"  fix: {error.hint}")
        return error.exit_code
    except KeyboardInterrupt:
        echo_err("interrupted: earlier artifacts and manifest are left as they were")
        return 130
    except Exception as error:  # a bug of ours or of a library: must not pass for a failed gate (exit 1)
        traceback.print_exc()
        echo_err(f"error: unexpected {type(error).__name__} in mobile-export: {error}")
        echo_err("  fix: nothing was published for the failing stage; please report this with the traceback above")
        return EXIT_CONVERTER
