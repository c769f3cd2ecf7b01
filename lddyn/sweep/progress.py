"""A sweep's running account: one line when a run starts, one when it ends, and the overall progress.

Lines, for a grid of 8 runs with 2 skipped::

    [1/6] start    g20-fixmatch-s0 (new)
    [1/6] finished g20-fixmatch-s0 in 41s
    sweep: 1/6 done (0 failed), 41s elapsed, about 3m25s left

The estimate is the elapsed time per finished run times the runs left, so it already accounts for
the runs going on in parallel; it is rough until a few runs have ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class SweepProgress:
    """Says one line per event through ``say``; ``names`` are the runs to be executed, in order."""

    def __init__(
        self, names: list[str], say: Callable[[str], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.index = {name: i + 1 for i, name in enumerate(names)}
        self.say, self.clock = say, clock
        self.t0 = clock()
        self.started_at: dict[str, float] = {}
        self.done = self.failed = 0

    def _tag(self, name: str) -> str:
        return f"[{self.index.get(name, '?')}/{len(self.index)}]"

    def started(self, name: str, resume: bool) -> None:
        self.started_at[name] = self.clock()
        self.say(f"{self._tag(name)} start    {name} ({'resumed' if resume else 'new'})")

    def ended(self, name: str, status: str, detail: str = "") -> None:
        self.done += 1
        self.failed += status != "finished"
        took = self.clock() - self.started_at.get(name, self.t0)
        self.say(
            f"{self._tag(name)} {status:<8} {name} in {duration(took)}" + (f": {detail}" if detail else "")
        )
        elapsed = self.clock() - self.t0
        left = len(self.index) - self.done
        eta = f", about {duration(elapsed / self.done * left)} left" if left else ""
        self.say(
            f"sweep: {self.done}/{len(self.index)} done ({self.failed} failed), "
            f"{duration(elapsed)} elapsed{eta}"
        )
