"""Log lines for refusals that come in floods: one line when a kind starts, then one per interval.

A connection flood is thousands of identical refusals a second; one log line each would be a second
flood (of the disk, and of whoever reads the log). So the first refusal of a kind (e.g. "https
listener_full") is logged at once, the following ones are counted, and while they go on one summary
line per `interval` says how many there were and from how many sources. A kind that stays quiet for
a whole interval starts over. Memory is bounded: sources are only counted up to MAX_SOURCES per kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

MAX_SOURCES = 1024


@dataclass
class _Run:
    started: float
    count: int = 0  # refusals since the last line
    sources: set[str] = field(default_factory=set)
    example: str = ""  # the latest source, for the summary


class RefusalLog:
    def __init__(self, logger: logging.Logger, interval: float = 10.0, level: int = logging.WARNING) -> None:
        self._log = logger
        self.interval = interval
        self.level = level
        self._runs: dict[str, _Run] = {}
        self.lines = 0  # lines written, for tests and metrics

    def note(self, kind: str, source: str, detail: str, now: float) -> None:
        """One refusal of `kind` (e.g. "mqtt source_full") from `source`; `detail` says why."""
        run = self._runs.get(kind)
        if run is None:
            self._runs[kind] = _Run(now)
            self._write(
                "%s: refusing %s (%s); further refusals of this kind are summed up every %g s",
                kind,
                source,
                detail,
                self.interval,
            )
            return
        run.count += 1
        run.example = source
        if len(run.sources) < MAX_SOURCES:
            run.sources.add(source)
        if now - run.started >= self.interval:
            self._summarise(kind, run, now)

    def flush(self, now: float) -> None:
        """Summaries of intervals that ended; kinds quiet for a whole interval start over."""
        for kind, run in list(self._runs.items()):
            if now - run.started < self.interval:
                continue
            if run.count:
                self._summarise(kind, run, now)
            else:
                del self._runs[kind]

    def _summarise(self, kind: str, run: _Run, now: float) -> None:
        many = "+" if len(run.sources) >= MAX_SOURCES else ""
        self._write(
            "%s: refused %d more in the last %.0f s from %d%s source(s), latest %s",
            kind,
            run.count,
            now - run.started,
            len(run.sources),
            many,
            run.example,
        )
        run.started, run.count, run.sources, run.example = now, 0, set(), ""

    def _write(self, message: str, *args: object) -> None:
        self.lines += 1
        self._log.log(self.level, message, *args)
