"""The contested-case report's clustering (issue 22): contested posts group by meaning across
Chinese and English, per tenant and language, with sizes, verdicts, reasons and a trend; the
page is escaped and plots every cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from guardstream.feedback.clusters import ContestedItem, as_json, cluster_items, render_html
from guardstream.verdict.embeddings import shared_embedder

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
TOPICS = {
    "region": [
        "那个省的人都是骗子，大家小心。",
        "那个省的人全是骗子，别信他们。",
        "People from that province are all liars, be careful.",
        "Everyone from that province is a cheat, don't trust them.",
    ],
    "spam": [
        "加微信买便宜的减肥药，三天瘦十斤。",
        "便宜减肥药，加微信购买，效果好。",
        "Buy cheap diet pills now, lose ten pounds in three days.",
    ],
}


def items(tenant: str = "acme", reason: str | None = "地域攻击") -> list[ContestedItem]:
    texts = [(topic, t) for topic, ts in TOPICS.items() for t in ts]
    vectors = shared_embedder().embed([t for _, t in texts])
    return [
        ContestedItem(
            task_id=f"{tenant}-{topic}-{n}",
            tenant=tenant,
            lang="zh",
            vector=vectors[n],
            decided_at=NOW - timedelta(days=2 if n % 2 else 10),
            human_verdict="unsafe" if topic == "region" else "safe",
            model_verdict="controversial",
            corrected=topic == "region",
            reason=reason if topic == "region" else "广告",
            preview=text,
        )
        for n, (topic, text) in enumerate(texts)
    ]


def test_contested_posts_cluster_by_meaning_across_languages_per_tenant() -> None:
    found = cluster_items([*items("acme"), *items("beta")], NOW)
    by_tenant = {(c.tenant, frozenset(e.task_id.split("-")[1] for e in c.examples)) for c in found}
    assert ("acme", frozenset({"region"})) in by_tenant and (
        "beta",
        frozenset({"spam"}),
    ) in by_tenant
    region = next(c for c in found if c.tenant == "acme" and c.verdicts.get("unsafe"))
    assert region.size == 4 and region.verdicts == {"unsafe": 4} and region.corrected == 4
    assert (region.recent, region.previous, region.trend) == (2, 2, "steady")
    assert region.reasons == [("地域攻击", 4)]
    spam = next(c for c in found if c.tenant == "acme" and c.verdicts.get("safe"))
    assert spam.size == 3
    assert all(c.tenant == "acme" for c in found[: len(found) // 2])  # grouped per tenant
    doc = as_json(found)
    assert doc[0]["size"] == 4 and doc[0]["trend"] == "steady"


def test_the_page_escapes_every_value_and_plots_each_cluster() -> None:
    hostile = "<script>alert(1)</script>"
    found = cluster_items(items(reason=hostile), NOW)
    page = render_html(found, NOW)
    tags: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.append(tag)

    Tags().feed(page)
    assert "script" not in tags and "&lt;script&gt;" in page
    assert tags.count("g") == len(found) and "svg" in tags
    assert render_html([], NOW).count("<tr>") == 1  # an empty report is still a page
