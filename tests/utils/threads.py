"""Running one piece of work in several threads at once, as several processes would."""

from __future__ import annotations

import threading
from collections.abc import Callable


def errors_running_together(work: Callable[[], object], times: int = 2, timeout: float | None = None
                            ) -> list[BaseException]:
    """Run `work` in `times` threads started together; the exceptions they raised (none: an empty list)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return errors
