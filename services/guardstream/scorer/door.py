"""The scorer's interactive door: `POST /v1/score`, the API's direct call into this engine.

Body: a score request as triage would send it (`ScoreRequest` JSON); header
`X-Guardstream-Deadline-Ms`: how long the caller waits (default `GUARDSTREAM_API_DEADLINE_S`).
The request is decided by `Scorer.interactive`, the stream's own code, at interactive engine
priority. Answers:

| outcome                                   | status | body                         |
|-------------------------------------------|--------|------------------------------|
| decided (model, cache, replay, deadline)  | 200    | the Decision sent            |
| escalated to the larger model's tier      | 202    | `{"escalated": true}`        |
| refused by the contract or the stores     | 422    | `{"reason", "detail"}`       |
| saturated, engine failed or dead          | 503    | `{"error"}`, `Retry-After`   |

Nothing is published for a 422 or a 503: the caller (the API) answers its own client and
dead-letters what the contract refused. Saturation is `interactive_max_in_flight` requests at
once: one more is refused at once instead of queueing behind them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis.exceptions

from guardstream.contracts.errors import PermanentError, TransientError
from guardstream.contracts.events import ContractError
from guardstream.runtime.jsonhttp import JsonServer, Reply
from guardstream.runtime.settings import Settings
from guardstream.scorer.service import Scorer

log = logging.getLogger(__name__)

DEADLINE_HEADER = "x-guardstream-deadline-ms"
SCORE_PATH = "/v1/score"
MAX_DEADLINE_S = 300.0


class InteractiveDoor:
    def __init__(self, scorer: Scorer, settings: Settings) -> None:
        self._scorer = scorer
        self._settings = settings
        self._in_flight = 0
        self._max = settings.scorer.interactive_max_in_flight
        self._busy = {"Retry-After": str(settings.api.retry_after_s)}

    def server(self) -> JsonServer:
        scorer = self._settings.scorer
        return JsonServer(
            scorer.interactive_host,
            scorer.interactive_port,
            {("POST", SCORE_PATH): self.score},
            # A request at the text limit, escaped in JSON, fits.
            max_body_bytes=max(
                self._settings.api.max_body_bytes, 16 * self._settings.process.max_text_chars
            ),
            name="scorer interactive",
        )

    def _deadline(self, headers: Mapping[str, str]) -> float:
        given = headers.get(DEADLINE_HEADER)
        # ASCII digits only (`str.isdigit` also takes `²`); past 9 digits it is over the cap
        # (and `int` of thousands of digits would raise).
        if given is not None and given.isascii() and given.isdigit():
            if len(given) > 9:
                return MAX_DEADLINE_S
            return min(max(int(given) / 1000, 0.001), MAX_DEADLINE_S)
        return self._settings.api.deadline_s

    async def score(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        if self._in_flight >= self._max:
            self._scorer.counts["interactive_refused"] += 1
            return Reply.json(503, {"error": "scorer saturated"}, **self._busy)
        self._in_flight += 1
        try:
            decision = await self._scorer.interactive(body, self._deadline(headers))
        except ContractError as exc:
            return Reply.json(422, {"reason": exc.reason, "detail": exc.detail})
        except (redis.exceptions.DataError, UnicodeError) as exc:
            return Reply.json(422, {"reason": "store_rejected", "detail": type(exc).__name__})
        except (TransientError, PermanentError) as exc:
            log.warning("interactive scoring failed", extra={"error": type(exc).__name__})
            return Reply.json(503, {"error": type(exc).__name__}, **self._busy)
        finally:
            self._in_flight -= 1
        if decision is None:
            return Reply.json(202, {"escalated": True})
        return Reply(200, decision.to_json())
