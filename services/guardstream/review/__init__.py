"""The review console: contested posts become tasks that reviewers decide in a web console.

`store` (PostgreSQL, migrations), `logic` (pure rules), `service` (the workflow), `api` (JSON
API), `console` (pages), `consumer` (Kafka in), `relay` (Kafka and cache out), `main` (the
`guardstream review` process).
"""
