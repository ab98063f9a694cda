"""A background writer: a bounded queue and one thread that hands each item to a sink.

The logger's hot path must never wait for a disk or a bucket, so finished batches
go to a thread (as TensorBoard's ``EventFileWriter`` does). This class is only the
queue and the thread; what is written, and what a failure means for training, is
the caller's policy:

* ``put(item)`` queues an item for the sink; when ``max_queue`` items wait, it
  blocks until the thread takes one (back-pressure: the host memory the queued
  batches pin stays bounded, whatever the disk does).
* An exception the sink raises in the thread is kept and raised in the caller at
  its next ``put``, ``flush`` or ``close`` (once: the thread goes on with the next
  item, so one failed write does not stop the ones after it).
* ``flush()`` waits until every queued item was written; ``close()`` does that and
  ends the thread; a ``put`` after ``close`` raises.

The sink is injected, so tests drive the queue and the thread with a fake.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

MAX_QUEUE = 4  # batches waiting for the thread before put() blocks


class WriterClosed(RuntimeError):
    """put() after close()."""


class AsyncWriter:
    """Items go to ``sink(item)`` on one background thread, in order; see the module docstring."""

    _STOP = object()

    def __init__(self, sink: Callable[[object], None], *, max_queue: int = MAX_QUEUE, name: str = "diffaudit-writer"):
        self._sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_queue)))
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is self._STOP:
                    return
                self._sink(item)
            except BaseException as e:  # kept for the caller: the thread itself must go on
                with self._lock:
                    if self._error is None:
                        self._error = e
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        with self._lock:
            err, self._error = self._error, None
        if err is not None:
            raise err

    def put(self, item) -> None:
        """Queue ``item`` (blocks while the queue is full); raises a failure of an earlier write, or after close."""
        if self._closed:
            raise WriterClosed("write after close")
        self._raise_pending()
        self._queue.put(item)

    def flush(self) -> None:
        """Wait until every queued item was handed to the sink; raise a failure of any of them."""
        self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        """Write what is queued, end the thread, and raise a failure of any write not raised yet."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(self._STOP)
        self._thread.join()
        self._raise_pending()

    @property
    def closed(self) -> bool:
        return self._closed
