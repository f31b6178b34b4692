"""The link between the build parent and its child: one duplex pipe, written synchronously.

Why not a multiprocessing Queue: Queue.put() hands the message to a feeder thread, so a child that dies right
after put() (segfault, os._exit, SIGKILL, the OOM killer) loses what it had sent. Measured: a segfault at the
start of unit 2 lost unit 1's `unit_done`, and the parent blamed unit 1 for the crash. A child killed in the
middle of a write also left a Queue reader blocked for good, since the parent held a write end of that pipe itself.
Here put() returns once the bytes are in the pipe, and the parent closes its copy of the child's end after the
start, so a dead child reads as end of file.
"""
from __future__ import annotations

import queue


class Channel:
    """One end of a `Pipe()`, with the few Queue methods the child uses (put, get, close, join_thread)."""

    def __init__(self, conn):
        self._conn = conn

    def put(self, msg) -> None:
        self._conn.send(msg)

    def get(self, timeout: float | None = None):
        """The next message. Raises queue.Empty after `timeout` seconds without one, EOFError (or OSError, for
        a message cut short) once the other end is closed and everything it sent was read."""
        if timeout is not None and not self._conn.poll(timeout):
            raise queue.Empty
        return self._conn.recv()

    def poll(self, timeout: float = 0.0) -> bool:
        """A message (or the end of file) is ready to read."""
        return self._conn.poll(timeout)

    def fileno(self) -> int:
        """For `multiprocess.connection.wait`: the parent waits on every child's channel at once."""
        return self._conn.fileno()

    def close(self) -> None:
        self._conn.close()

    def join_thread(self) -> None:
        """Nothing to flush: put() is synchronous (kept so the child can treat a Queue and a Channel alike)."""
