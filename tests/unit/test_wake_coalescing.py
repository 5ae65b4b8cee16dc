"""Wake-ups are hints: a burst becomes one broker message, sent off the request's thread."""

from __future__ import annotations

import threading
import time

from mailer.tasks import Coalesced


class Publisher:
    """Counts the messages it is asked to publish; each one takes `cost` seconds, like a broker."""

    def __init__(self, cost: float = 0.0) -> None:
        self.cost = cost
        self.published = 0
        self.at: list[float] = []  # when each message went out
        self.lock = threading.Lock()

    def __call__(self) -> None:
        time.sleep(self.cost)
        with self.lock:
            self.published += 1
            self.at.append(time.monotonic())


def wait_for(check: Publisher, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while check.published < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_burst_of_wake_ups_is_one_message() -> None:
    """A hundred wake-ups within the delay publish one message, and a later one publishes again."""
    publish = Publisher()
    wake = Coalesced(publish, delay=0.2)
    for _ in range(100):
        wake()
    wait_for(publish, 1)
    time.sleep(0.3)  # nothing more comes of the burst
    assert publish.published == 1
    wake()
    wait_for(publish, 2)
    assert publish.published == 2


def test_a_wake_up_never_waits_for_the_broker() -> None:
    """The request's thread returns at once even when publishing takes half a second."""
    publish = Publisher(cost=0.5)
    wake = Coalesced(publish, delay=0.01)
    started = time.monotonic()
    wake()
    assert time.monotonic() - started < 0.05
    wait_for(publish, 1)
    assert publish.published == 1


def test_wake_ups_from_many_threads_are_all_covered() -> None:
    """Wake-ups racing from 8 threads: a message goes out after the last of them, and few in all."""
    publish = Publisher()
    wake = Coalesced(publish, delay=0.05)
    called: list[float] = []

    def burst() -> None:
        for _ in range(50):
            called.append(time.monotonic())  # its transaction has committed by now
            wake()

    threads = [threading.Thread(target=burst) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.3)  # every pending message has gone out
    assert 1 <= publish.published <= 8
    assert max(publish.at) > max(called)  # a message went out after the last wake-up: its rows are covered
