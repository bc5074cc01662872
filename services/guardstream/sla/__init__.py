"""The SLA timer: contested items unreviewed past their policy's deadline are downgraded to
safe, with alerts. `logic` (pure: deadlines, effects, ids) · `app` (faust app: agent, table,
timer) · `main` (the `guardstream sla` process)."""
