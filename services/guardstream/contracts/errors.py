"""Every guardstream exception derives from `GuardstreamError`, and its class says whether the
work that raised it may succeed if tried again unchanged (`retriable`).

The consumer loop (`runtime.loop.is_transient`) reads only that policy: a transient error
retries the whole batch with capped backoff, forever; anything else stops the process with the
batch uncommitted (a record's own bad data is dead-lettered before it gets there). The review
API answers its transient errors with 429/503 and its permanent ones with a 4xx. Classes keep
the built-in base their callers catch them by (a `ContractError` is still a `ValueError`).

| class                                   | module                 | built-in base  | retriable |
|-----------------------------------------|------------------------|----------------|-----------|
| `TransientError`                        | contracts.errors       |                | yes       |
| `PermanentError`                        | contracts.errors       |                | no        |
| `ContractError`                         | contracts.events       | `ValueError`   | no        |
| `OutputRejected`                        | runtime.kafka          |                | no        |
| `Unavailable` (Redis did not answer)    | runtime.redisstore     |                | yes       |
| `TelemetryError`                        | runtime.telemetry      | `RuntimeError` | no        |
| `AdapterError`                          | model.adapters         | `ValueError`   | no        |
| `ModelUnavailable`                      | model.guard            |                | no        |
| `TinyCheckpointError`                   | model.tiny             | `RuntimeError` | no        |
| `PolicyLoadError`                       | policy.loader          | `ValueError`   | no        |
| `PolicyConflictError`                   | policy.registry        | `ValueError`   | no        |
| `NoExperimentError`                     | policy.ab_report       | `ValueError`   | no        |
| `RuleProblems`                          | policy.rules           | `ValueError`   | no        |
| `HistoryError`                          | policy.history         | `ValueError`   | no        |
| `ArchiveError`                          | verdict.archive        | `ValueError`   | no        |
| `ScoringError` (this request failed)    | scorer.engine          |                | yes       |
| `EngineDead`                            | scorer.engine          |                | no        |
| `TemplateTooLong`                       | scorer.prompt          | `ValueError`   | no        |
| `BadLine`                               | scorer.calibration     |                | no        |
| `NotTrainable`                          | feedback.dataset       | `ValueError`   | no        |
| `ReviewError` (a 4xx with its `status`) | review.services.errors |                | no        |
| `Unauthenticated` (a `ReviewError`)     | review.services.errors |                | no        |
| `Forbidden` (a `ReviewError`)           | review.services.errors |                | no        |
| `NotFound` (a `ReviewError`)            | review.services.errors |                | no        |
| `Conflict` (a `ReviewError`)            | review.services.errors |                | no        |
| `ExportUnavailable` (503, a `ReviewError`) | review.services.errors |             | no        |
| `InvalidSubmission`                     | review.logic           | `ValueError`   | no        |
| `HashPoolBusy` (429, retry shortly)     | review.auth            |                | yes       |
| `Throttled` (429, Retry-After)          | review.shield          |                | yes       |
| `NeedLogin`                             | review.console         |                | no        |
| `AuditFailed` (503, nothing was done)   | review.store.audit     | `RuntimeError` | yes       |
| `ClaimLimitReached`                     | review.store.claims    |                | no        |
| `StackError`                            | devtools.stack         | `RuntimeError` | no        |
| `TopicsMissing`                         | devtools.produce       | `RuntimeError` | no        |
| `PlanError`                             | devtools.plan          |                | no        |
| `BadHttpRequest` (4xx, connection closed) | runtime.jsonhttp     |                | no        |
| `BodyTooLarge` (413)                    | api.app                |                | no        |
| `KeyRequestInvalid` (a key's values)    | api.keys               | `ValueError`   | no        |
| `KeyStoreUnavailable` (503, Retry-After) | api.keys              |                | yes       |
| `TenantMismatch` (403)                  | api.gate               |                | no        |
| `OpenApiRefused` (auth off, not local)  | api.gate               |                | no        |
| `InvalidSelector` (an erasure request)  | verdict.erasure        | `ValueError`   | no        |

Third-party exceptions (aiokafka, asyncpg, redis) are not ours to subclass: each consumer maps
the ones it expects to `TransientError` or a DLQ reason where it knows which they are, and the
loop keeps the one table for those that reach it raw (`runtime.loop.FOREIGN_RETRY_POLICY`).
"""

from __future__ import annotations

from typing import ClassVar


class GuardstreamError(Exception):
    """A guardstream failure; `retriable` is its retry policy (never set per instance)."""

    retriable: ClassVar[bool] = False


class TransientError(GuardstreamError):
    """The same work may succeed later: retry it (a batch: the whole batch, never skipped,
    never dead-lettered)."""

    retriable: ClassVar[bool] = True


class PermanentError(GuardstreamError):
    """Trying the same work again cannot help: fix the input, the files or the code."""

    retriable: ClassVar[bool] = False
