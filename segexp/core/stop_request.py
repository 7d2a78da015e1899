"""Whether the user or the cluster asked this process to stop (Ctrl-C, SIGTERM).

The commands turn both signals into ``KeyboardInterrupt`` (:mod:`segexp.cli.shell`) and note the
request here first. The note is needed because an interrupt raised inside TensorFlow's Python code
(while it traces a ``tf.function`` for ``model.predict``) can come out as another error whose chain of
causes no longer holds the ``KeyboardInterrupt``; the training loop asks :func:`stop_requested` to tell
such an error from a crash.
"""

from __future__ import annotations

_signal: int | None = None


def note_stop_request(signum: int) -> None:
    """Record that signal ``signum`` asked the process to stop."""
    global _signal
    _signal = signum


def stop_requested() -> int | None:
    """The signal that asked the process to stop, or None when none did."""
    return _signal


def clear_stop_request() -> None:
    """Forget an earlier request (a command starting in the same process, e.g. in tests)."""
    global _signal
    _signal = None
