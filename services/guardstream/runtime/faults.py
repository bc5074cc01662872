"""Fault points: crash a process at an exact place, for the reliability suite.

A signal from outside cannot land "after the outputs were acknowledged but before the offsets
were committed" on demand; this can. Off unless `GUARDSTREAM_FAULT` names a point, e.g.
`after_publish:2` (SIGKILL ourselves the 2nd time that point is reached). Never set it in a
deployment: it exists so tests can prove what happens when a process dies there.

Points: `after_publish` (every consumer loop: outputs acknowledged, offsets not committed),
`scorer_scored` (the scorer: the model answered a batch, nothing of it published yet) and
`sla_after_publish` (the SLA app).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)


class FaultPoints:
    def __init__(self, spec: str | None) -> None:
        self._point, self._at = None, 0
        if spec:
            point, _, count = spec.partition(":")
            self._point, self._at = point, int(count or 1)
        self._seen = 0

    def reach(self, point: str) -> None:
        if point != self._point:
            return
        self._seen += 1
        if self._seen == self._at:
            log.warning("fault point reached: killing this process", extra={"point": point})
            os.kill(os.getpid(), signal.SIGKILL)
