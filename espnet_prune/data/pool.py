"""The data stages' process pool: one child process per job, at most ``nj`` at a time.

:func:`run_jobs` starts job ``i`` with ``start(i)`` in index order, at most ``nj`` at
once, and reads what each child writes to its error channel (a pipe, read while the
child runs, so a chatty child never blocks). After the first failure it starts no more
jobs but lets the running ones finish; if the parent is interrupted (any exception), the
running children are killed. It returns the failed jobs; the caller turns them into its
own error message (naming the utterance).

Two kinds of child, for two needs:

* :class:`ForkedCall` runs ``fn(*args)`` in a forked copy of the parent. The mini corpus
  uses it: every utterance must start from the pristine state of the one synthesiser the
  parent initialised. Error channel: the traceback of an exception (last 4000 bytes).
* :class:`Command` runs a program in a fresh process. Feature extraction uses it: its
  workers must not inherit the parent's threads or torch state (and callers need no
  ``__main__`` guard). Error channel: the program's stderr; its stdout is discarded.
"""

from __future__ import annotations

import os
import select
import subprocess
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple


@dataclass
class Failure:
    """A job whose child exited with a non-zero status.

    Attributes:
        index: the job's index (the argument of ``start``).
        code: exit status; negative: killed by that signal.
        output: what the child wrote to its error channel (undecodable bytes replaced).
    """

    index: int
    code: int
    output: str


class Child(Protocol):
    """A running child process: ``fd`` is the read end of its error channel (EOF = done)."""

    fd: int

    def finish(self) -> int:
        """Wait for the child to exit, close the channel, return the exit status."""

    def kill(self) -> None:
        """Kill the child (if still running), reap it and close the channel."""


class ForkedCall:
    """``fn(*args)`` in a forked child; exit status 1 and the traceback if it raises."""

    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(rfd)
                fn(*args)
            except BaseException:  # noqa: BLE001
                code = 1
                try:
                    os.write(wfd, traceback.format_exc().encode()[-4000:])
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(wfd)
        self.pid = pid
        self.fd = rfd

    def finish(self) -> int:
        os.close(self.fd)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


class Command:
    """The program ``cmd`` (argv list) in a fresh process, with environment ``env``."""

    def __init__(self, cmd: Sequence[str], env: Optional[Mapping[str, str]] = None) -> None:
        self.proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        self.fd = self.proc.stderr.fileno()

    def finish(self) -> int:
        code = self.proc.wait()
        self.proc.stderr.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()


def run_jobs(
    n_jobs: int,
    start: Callable[[int], Child],
    nj: int,
    on_exit: Optional[Callable[[int], None]] = None,
) -> List[Failure]:
    """Run jobs ``0..n_jobs-1``, each in the child ``start(i)``, at most ``nj`` at a time.

    Args:
        on_exit: called with the number of children that have exited so far, after each.

    Returns:
        The failed jobs in the order their children exited (empty: all succeeded). After
        the first failure no further job is started.
    """
    running: Dict[int, Tuple[int, Child, bytearray]] = {}  # fd -> (index, child, output)
    failures: List[Failure] = []
    next_job = 0
    done = 0
    try:
        while True:
            while not failures and len(running) < nj and next_job < n_jobs:
                child = start(next_job)
                running[child.fd] = (next_job, child, bytearray())
                next_job += 1
            if not running:
                break
            ready, _, _ = select.select(list(running), [], [])
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    running[fd][2].extend(chunk)
                    continue
                index, child, output = running.pop(fd)
                code = child.finish()
                if code != 0:
                    failures.append(Failure(index, code, output.decode(errors="replace")))
                done += 1
                if on_exit is not None:
                    on_exit(done)
    finally:
        for _, child, _ in list(running.values()):  # only on errors / interrupts
            child.kill()
    return failures
