"""A micro-batcher: concurrent requests to one model answered by one compiled pass.

Requests are queued; one worker thread takes everything queued (up to
`max_examples` examples), waiting at most `max_wait` seconds for more after the
first, concatenates the inputs along the batch axis, runs `fn` once and splits
the results. With max_wait=0 nothing waits: requests that arrive while a pass
runs form the next batch. A request that finds the batcher idle (nothing
running or queued) runs at once in the caller's thread, so a lone request pays
no thread hand-off.
Only functions whose result for one example does not depend on the others
(marginal predictives) may be batched.
"""

import concurrent.futures
import queue
import threading
import time

import numpy as np

from .errors import DeadlineExceeded

_STOP = object()


class MicroBatcher:
    """Batches calls of fn(x (n, ...)) -> tuple of arrays with leading axis n.

    Args:
      fn: the batched function.
      max_examples: most examples in one pass (a single larger request runs alone).
      max_wait: seconds to wait for more requests after the first of a batch.
      name: worker thread name.
    """

    def __init__(self, fn, max_examples=256, max_wait=0.0, name="batcher"):
        self.fn, self.max_examples, self.max_wait = fn, max_examples, max_wait
        self._queue = queue.Queue()
        self._lock = threading.Lock()
        self._active = 0  # requests running inline, queued or in the worker's pass
        self._pending = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.batches = 0  # passes run, for tests and benchmarks
        self.requests = 0

    def submit(self, x, deadline=None):
        """Queue x (n, ...); returns a Future of fn's tuple for these n examples.
        `deadline` (time.monotonic() seconds) fails the request with DeadlineExceeded
        when it has passed before its batch runs."""
        future = concurrent.futures.Future()
        with self._lock:
            inline = self._active == 0 and self.max_wait == 0
            self._active += 1
        if not inline:
            self._queue.put((x, deadline, future))
            return future
        try:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(tuple(self.fn(x)))
            except Exception as error:
                future.set_exception(error)
        finally:
            self._done(1)
        return future

    def _done(self, count):
        with self._lock:
            self._active -= count

    def close(self):
        """Stop the worker after the queued requests are answered."""
        self._queue.put(_STOP)
        self._thread.join()

    def _next(self, timeout):
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        if timeout is None:
            return self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _run(self):
        while True:
            first = self._next(None)
            if first is _STOP:
                return
            items, count = [first], len(first[0])
            end = time.monotonic() + self.max_wait
            stop = False
            while count < self.max_examples:
                try:
                    item = self._next(end - time.monotonic())
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if count + len(item[0]) > self.max_examples:
                    self._pending = item
                    break
                items.append(item)
                count += len(item[0])
            try:
                self._answer(items)
            finally:
                self._done(len(items))
            if stop:
                return

    def _answer(self, items):
        now = time.monotonic()
        live = []
        for x, deadline, future in items:
            if not future.set_running_or_notify_cancel():
                continue
            if deadline is not None and now > deadline:
                future.set_exception(DeadlineExceeded("The deadline passed while the request was queued."))
                continue
            live.append((x, future))
        if not live:
            return
        try:
            x = live[0][0] if len(live) == 1 else np.concatenate([x for x, _ in live])
            outputs = self.fn(x)
        except Exception as error:  # answer every caller with the failure
            for _, future in live:
                future.set_exception(error)
            return
        self.batches += 1
        self.requests += len(live)
        start = 0
        for x, future in live:
            future.set_result(tuple(out[start : start + len(x)] for out in outputs))
            start += len(x)
