"""What every command shell shares: the signal policy and the one place user errors are reported.

* :func:`interrupt_on_sigterm`: SIGTERM (``kill``, a cluster's pre-emption, ``scancel``)
  raises ``KeyboardInterrupt`` like Ctrl-C, so a run in progress ends through the same path
  whatever the tracking setting: the resume message is logged and a tracked run ends KILLED.
* :func:`user_errors_exit`: a :class:`~segexp.core.errors.SegexpError` is printed as one
  line (its message names the key, file or value) and the command exits 2; Ctrl-C and SIGTERM
  exit 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from segexp.core.errors import SegexpError
from segexp.core.stop_request import clear_stop_request, note_stop_request

log = logging.getLogger("segexp")

#: Exit codes of every command.
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _interrupt(signum: int, frame: Any) -> None:
    note_stop_request(signum)
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into ``KeyboardInterrupt`` inside the block, as Ctrl-C is, and note either request
    (:mod:`segexp.core.stop_request`); main thread only; the previous handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    clear_stop_request()
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """Report a :class:`SegexpError` as one line and exit 2; exit 130 on Ctrl-C or SIGTERM."""
    try:
        with interrupt_on_sigterm():
            yield
    except SegexpError as err:
        log.error("%s", err)
        if err.__cause__ is not None:  # the library error behind it, for the debug log (hydra.verbose=true)
            log.debug("caused by", exc_info=err.__cause__)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:  # what was saved and how to continue is logged where it happened
        sys.exit(EXIT_INTERRUPTED)
