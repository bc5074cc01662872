"""The review workflow as small services, one per concern; `review.wiring` builds them.

| service                | does                                                              |
|------------------------|-------------------------------------------------------------------|
| `auth.AuthService`     | login, tokens, console sessions, credential lifecycle, refusals   |
| `queue.QueueService`   | the queue, its figures, one task with its text (reads)            |
| `tasks.TaskService`    | claims, round-robin assignment, lock expiry, first-stage decisions |
| `qa.QaService`         | QA re-reviews, the blind QA queue, batches and their agreement    |
"""
