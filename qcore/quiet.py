"""Keeps TensorFlow's native log lines and libraries' prints out of the user's terminal unless asked for."""

from __future__ import annotations

import contextlib
import logging
import os
import runpy
import sys
import warnings
from collections.abc import Iterator
from typing import TextIO

# Python loggers of libraries whose INFO/WARNING lines are noise for a user of the CLI
NOISY_LOGGERS = ("tensorflow", "absl", "h5py", "keras", "tf_keras", "jax", "matplotlib")


def set_log_env(verbose: bool = False) -> None:
    """Sets what native TensorFlow reads once, at import; call before TensorFlow is imported.

    TF 2.21 logs through absl before anything can initialise absl, so its first lines (oneDNN,
    cuInit, "All log messages before absl::InitializeLog()") reach fd 2 whatever these say;
    `native_output` is what silences those.
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    os.environ["GRPC_VERBOSITY"] = "INFO" if verbose else "ERROR"


def quiet_python_logs(verbose: bool = False) -> None:
    """Library loggers at INFO with `verbose`, else ERROR; Python warnings off unless verbose."""
    level = logging.INFO if verbose else logging.ERROR
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore")


class CurrentStderr:
    """A stream that writes to whatever `sys.stderr` is at the time (for logging handlers)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@contextlib.contextmanager
def native_output(verbose: bool = False) -> Iterator[TextIO]:
    """Engine work inside: nothing a library prints can reach our stdout.

    File descriptor 1 and Python's `sys.stdout` go to the user's stderr with `verbose`, else to
    /dev/null; fd 2 goes to /dev/null unless `verbose`. Python's `sys.stderr` keeps reaching the
    user's terminal, for our own messages. Everything is restored on exit, so the caller prints
    its one result on the real stdout afterwards.

    Yields:
        The user's stderr as a text stream.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    old_out, old_err = sys.stdout, sys.stderr
    user_err = os.fdopen(os.dup(saved_err), "w", buffering=1)
    python_out = user_err if verbose else open(os.devnull, "w")  # noqa: SIM115 (closed below)
    try:
        os.dup2(saved_err if verbose else devnull, 1)
        if not verbose:
            os.dup2(devnull, 2)
        sys.stdout, sys.stderr = python_out, user_err
        yield user_err
    finally:
        for stream in (python_out, user_err):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = old_out, old_err
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, devnull):
            os.close(fd)
        if python_out is not user_err:
            python_out.close()
        user_err.close()


def run_script_quietly(argv: list[str]) -> None:
    """`python -m qcore.quiet SCRIPT [ARGS]`: runs a script with TensorFlow's native logs silenced.

    `make bench` runs every bench script this way; QLAB_VERBOSE=1 (`make bench V=1`) shows them.
    The script's own prints go to stdout and its errors to stderr as usual.
    """
    if not argv:
        raise SystemExit("usage: python -m qcore.quiet SCRIPT [ARGS...]")
    verbose = os.environ.get("QLAB_VERBOSE", "") not in ("", "0")
    set_log_env(verbose)
    quiet_python_logs(verbose)
    if verbose:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")
        return
    # the script's stdout stays the real one: only fd 2 goes to /dev/null, Python's stderr is kept
    sys.stderr.flush()
    saved_err = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(saved_err, "w", buffering=1)
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    run_script_quietly(sys.argv[1:])
