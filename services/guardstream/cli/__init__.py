"""`guardstream` — run the processes, manage topics, send posts, run the local stack.

One module per command group; this one only assembles them."""

from __future__ import annotations

import typer

from guardstream.cli import (
    api,
    diagnose,
    erase,
    feedback,
    maintenance,
    model,
    plan,
    policy,
    processes,
    produce,
    review,
    stack,
    tail,
    topics,
    webhooks,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help=__doc__.split("\n")[0],
    pretty_exceptions_enable=False,
)
for command in (
    processes.triage,
    processes.scorer,
    processes.sla,
    diagnose.settings,
    produce.produce,
    tail.tail,
    diagnose.doctor,
    diagnose.calibrate,
    plan.plan,
    erase.erase,
    maintenance.maintenance,
):
    app.command()(command)
app.add_typer(topics.app, name="topics")
app.add_typer(model.app, name="model")
app.add_typer(stack.app, name="stack")
app.add_typer(feedback.app, name="feedback")
app.add_typer(review.app, name="review")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(api.app, name="api")
app.add_typer(policy.app, name="policy")
