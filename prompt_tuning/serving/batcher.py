"""A bounded micro-batching queue: requests wait at most `max_wait_s` to share a forward pass.

Requests carry a `key` (what must be equal for two requests to share a compiled call, e.g.
the kind of request and its decoding options) and a row count. The worker takes the oldest
request, then gathers later requests with the same key until the batch holds `max_rows` rows or
`max_wait_s` has passed since it took the first; requests with other keys keep their place for
a later batch. Different tasks share a key, so they share a pass (each row picks its prompt).

Hand-written rather than taken from a serving library: the batching rule is a few lines, and
the project's stack (JAX, no async runtime) gains nothing from an extra dependency here.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from typing import Any, Callable, Deque, Hashable, List, Optional


class Overloaded(RuntimeError):
  """The queue is full; the caller should answer 'overloaded' and let the client retry."""


@dataclasses.dataclass
class Request:
  key: Hashable
  rows: int
  payload: Any
  future: concurrent.futures.Future = dataclasses.field(
      default_factory=concurrent.futures.Future)


RunBatch = Callable[[Hashable, List[Any]], List[Any]]


class MicroBatcher:
  """Runs `run_batch(key, payloads) -> results` (one result per payload) on a worker thread."""

  def __init__(self, run_batch: RunBatch, *, max_rows: int, max_wait_s: float,
               max_queue: int):
    if max_rows < 1 or max_queue < 1 or max_wait_s < 0:
      raise ValueError("MicroBatcher needs max_rows >= 1, max_queue >= 1 and max_wait_s >= 0.")
    self._run_batch = run_batch
    self.max_rows, self.max_wait_s, self.max_queue = max_rows, max_wait_s, max_queue
    self._pending: Deque[Request] = collections.deque()
    self._cond = threading.Condition()
    self._stop = False
    self._thread: Optional[threading.Thread] = None
    self.batches = 0  # forward passes run so far
    self.rows = 0

  def queued(self) -> int:
    with self._cond:
      return len(self._pending)

  def submit(self, key: Hashable, payload: Any, rows: int = 1) -> concurrent.futures.Future:
    """Queues one request; raises `Overloaded` when `max_queue` requests already wait."""
    if rows > self.max_rows:
      raise ValueError(f"The request needs {rows} rows; one batch holds at most "
                       f"{self.max_rows}.")
    request = Request(key=key, rows=rows, payload=payload)
    with self._cond:
      if len(self._pending) >= self.max_queue:
        raise Overloaded(f"The server is overloaded ({self.max_queue} requests queued); retry "
                         "later.")
      self._pending.append(request)
      self._cond.notify_all()
    return request.future

  def start(self) -> None:
    if self._thread is None:
      self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
      self._thread.start()

  def stop(self, timeout: float = 10.0) -> None:
    with self._cond:
      self._stop = True
      self._cond.notify_all()
    if self._thread is not None:
      self._thread.join(timeout)

  def _take(self) -> List[Request]:
    """Waits for a first request, then gathers same-key requests until full or out of time."""
    with self._cond:
      while not self._pending and not self._stop:
        self._cond.wait(0.1)
      if self._stop:
        return []
      first = self._pending.popleft()
      batch, rows = [first], first.rows
      deadline = time.monotonic() + self.max_wait_s
      while rows < self.max_rows:
        fits = [r for r in self._pending if r.key == first.key and rows + r.rows <= self.max_rows]
        for request in fits:
          if rows + request.rows > self.max_rows:
            break
          self._pending.remove(request)
          batch.append(request)
          rows += request.rows
        left = deadline - time.monotonic()
        if rows >= self.max_rows or left <= 0 or self._stop:
          break
        self._cond.wait(left)
      return batch

  def _loop(self) -> None:
    while True:
      batch = self._take()
      if not batch:
        return
      try:
        results = self._run_batch(batch[0].key, [r.payload for r in batch])
        self.batches += 1
        self.rows += sum(r.rows for r in batch)
        for request, result in zip(batch, results):
          if isinstance(result, BaseException):
            request.future.set_exception(result)
          else:
            request.future.set_result(result)
      except Exception as error:  # pylint: disable=broad-except  (each caller gets the error)
        for request in batch:
          if not request.future.done():
            request.future.set_exception(error)
