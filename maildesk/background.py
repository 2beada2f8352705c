"""A daemon thread that sleeps until woken or stopped: the shape of the worker and the sender.

Subclasses implement `_run`, looping until `_stop` is set and waiting on `_event`
(set by `wake()`) between rounds. `stop()` sets both and joins.
"""

from __future__ import annotations

import threading


class BackgroundLoop:
    thread_name = "background"

    def __init__(self) -> None:
        self._event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Work is waiting: run a round now. Safe from any thread."""
        self._event.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Finish the round in hand, then stop."""
        self._stop.set()
        self._event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError
