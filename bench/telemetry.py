"""What tracing costs per consumed record, in the consumer runtime's own calls.

Per batch of `--batch` records (half carrying a producer's `traceparent`) the runtime opens a
`BatchTrace` (a CONSUMER span per record + a batch span), the handler `bind`s each record, the
outbox builds one output's headers per record (`output_headers`, with decision attributes),
and the batch ends. Modes, each in a fresh interpreter (OpenTelemetry's globals are set once):

- `api`       no SDK installed (in-process tests and benches): per-record work is skipped
- `sampled`   SDK, every trace recorded, spans batched to an exporter that drops them
- `unsampled` SDK with `trace_sample_ratio=0` for new traces (the half of the records whose
              producer sampled them are still recorded, as a deployment would)

Prints µs per record for each mode, measured in this run (compare with triage's cost per post
from `bench/pipeline.py`); the last line is one JSON object.

    .venv/bin/python bench/telemetry.py [--batch 500] [--batches 40]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def measure(mode: str, batch: int, batches: int) -> float:
    """µs per record for `mode`, in this interpreter."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from guardstream.runtime import telemetry, tracing
    from guardstream.runtime.settings import Settings

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[object]) -> SpanExportResult:  # type: ignore[override]
            return SpanExportResult.SUCCESS

    if mode != "api":
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        ratio = 1.0 if mode == "sampled" else 0.0
        handle = telemetry.setup(
            Settings(telemetry={"metrics_port": 0, "trace_sample_ratio": ratio}), "bench"
        )
        handle.tracer_provider.add_span_processor(BatchSpanProcessor(Dropped()))

    attributes = {
        "guardstream.verdict": "safe",
        "guardstream.action": "allow",
        "guardstream.source": "cache",
        "guardstream.tenant": "default",
    }
    offset = 0
    elapsed = 0.0
    for _ in range(batches):
        records = []
        for i in range(batch):
            headers = [("traceparent", TRACEPARENT)] if i % 2 else []
            records.append(Record("posts.v1", i % 12, offset, headers))
            offset += 1
        started = time.perf_counter()
        trace = tracing.BatchTrace("triage", "guardstream-triage", records)
        with tracing.batch_scope(trace):
            for record in records:
                tracing.bind(record, f"event-{record.offset}")
            for n, record in enumerate(records):
                tracing.output_headers(
                    f"event-{record.offset}",
                    attributes={**attributes, "guardstream.post_id_hash": tracing.hashed(str(n))},
                )
        trace.end()
        elapsed += time.perf_counter() - started
    return elapsed / (batch * batches) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--mode", choices=("api", "sampled", "unsampled"))
    args = parser.parse_args(argv)
    if args.mode:  # a child: one mode, one number
        cost = measure(args.mode, args.batch, args.batches)
        print(orjson.dumps({"us_per_record": cost}).decode())
        return 0
    results: dict[str, float] = {}
    for mode in ("api", "sampled", "unsampled"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--batch", str(args.batch),
             "--batches", str(args.batches)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[mode] = orjson.loads(out.stdout.strip().splitlines()[-1])["us_per_record"]
        print(f"{mode:>10}: {results[mode]:7.1f} µs per record")
    summary = {
        "batch": args.batch,
        "records": args.batch * args.batches,
        **{f"{m}_us_per_record": round(v, 2) for m, v in results.items()},
    }
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
