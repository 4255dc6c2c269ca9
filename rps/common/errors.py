"""User-facing errors: one paragraph that names what is wrong and how to fix it."""

from contextlib import contextmanager
from typing import Callable, Iterator, Optional


class RpsError(Exception):
    """An error caused by the user's input or environment (not a bug in rps).

    The runner prints its message without a traceback and exits non-zero.
    """

    exit_code = 2


class ConfigError(RpsError):
    """A configuration value is out of range, of the wrong kind, or inconsistent."""


class ResourceError(RpsError):
    """A dataset, backbone, path or tracking server cannot be reached or read."""


class DataError(RpsError):
    """The data itself is unusable (corrupt images, empty classes, too few examples)."""


class IntegrityError(RpsError):
    """A model's files are not the ones its run recorded (or cannot be checked): nothing is loaded."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C, so the MLflow run ends KILLED."""


def interrupt_on_signals() -> None:
    """SIGTERM raises :class:`Terminated` and Ctrl-C ``KeyboardInterrupt`` in the main thread, so
    the run in progress ends KILLED; Python's Ctrl-C handler is installed explicitly, because
    shells start background jobs with SIGINT ignored."""
    import signal

    def on_sigterm(signum, frame):
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _chain(err: Optional[BaseException]) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised while handling (its ``__context__``s), each once."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__context__


def interrupt_behind(err: BaseException) -> Optional[KeyboardInterrupt]:
    """The Ctrl-C or SIGTERM that ``err`` was raised while handling (at any depth), if any."""
    return next((e for e in _chain(err) if isinstance(e, KeyboardInterrupt)), None)


def release_interrupted(err: BaseException) -> None:
    """Free what the frames an interrupt ran through still hold (their local variables), for
    ``err`` and the exceptions it interrupted; frames still running (the handler's, its callers')
    are left alone.

    A Ctrl-C landing inside a database call leaves the interrupted cursor in those frames. SQLite
    cannot close a connection while one of its cursors lives, so the write transaction, and the
    database's lock, would outlive the call: this process's next write (marking its run KILLED)
    would wait out MLflow's 20 s busy timeout and fail, three times over.
    """
    import traceback

    for e in _chain(err):
        traceback.clear_frames(e.__traceback__)


@contextmanager
def signals_held(second_at_once: bool = False) -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM arriving inside the block are held and delivered when it ends, or earlier
    where the block calls the ``deliver()`` it is given (a point where an exception is safe).

    For code that runs many finalizers (a garbage collection): Python drops an exception raised
    inside a finalizer ("Exception ignored in ..."), so a Ctrl-C landing there would be lost. For
    training: an exception landing inside TensorFlow's own ``with`` blocks (a device scope being
    entered) can leave them unbalanced, and the error their exit raises replaces the interrupt.
    With ``second_at_once``, a second signal is not held: it acts at once (a Ctrl-C pressed again
    where the next safe point is slow to come).
    An ignored signal stays ignored. Outside the main thread (where handlers cannot be changed), or
    where a handler was installed by C code (Python could not put it back), the block runs as it is.
    """
    import signal
    import threading

    held_signals = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    if threading.current_thread() is not threading.main_thread() or None in map(signal.getsignal, held_signals):
        yield lambda: None
        return
    held: list[int] = []
    previous: dict = {}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
        previous.clear()

    def deliver() -> None:
        """If a signal was held: put the handlers back and raise the first one through them."""
        if held:
            restore()
            signum = held[0]
            held.clear()
            signal.raise_signal(signum)

    def hold(signum, frame) -> None:
        held.append(signum)
        if second_at_once and len(held) > 1:
            deliver()

    try:
        for s in held_signals:  # inside the try: a signal arriving between the two still gets both back
            previous[s] = signal.signal(s, hold)
        yield deliver
    finally:
        restore()
        deliver()
