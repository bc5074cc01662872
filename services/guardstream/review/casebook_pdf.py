"""The casebook as a PDF (issue 22): one pack's entries, printed from a server-rendered page
(`templates/casebook_print.html`) with WeasyPrint - a library, so the console process makes it
without a browser. Every value is autoescaped text; the renderer fetches nothing (no protocol is
allowed), so nothing in an entry can make it read a file or a URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from guardstream.review.casebook import CaseEntry
from guardstream.review.services.errors import ExportUnavailable

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True),
)


def casebook_html(
    entries: Sequence[CaseEntry], tenant: str, pack: str, generated_at: datetime
) -> str:
    return _TEMPLATES.get_template("casebook_print.html").render(
        entries=entries, tenant=tenant, pack=pack, generated_at=generated_at
    )


def casebook_pdf(
    entries: Sequence[CaseEntry], tenant: str, pack: str, generated_at: datetime
) -> bytes:
    """The PDF's bytes (CPU-bound, ~0.2 s a page: run it off the event loop)."""
    # Without the system's pango the import fails (OSError): the export is refused (503), the
    # console goes on.
    try:
        # lazy: WeasyPrint loads pango through cffi; only an export needs it
        from weasyprint import HTML, URLFetcher
    except (ImportError, OSError) as exc:
        raise ExportUnavailable(
            f"PDF export unavailable on this deployment ({type(exc).__name__}: needs pango)"
        ) from exc

    page = casebook_html(entries, tenant, pack, generated_at)
    pdf: bytes = HTML(string=page, url_fetcher=URLFetcher(allowed_protocols=())).write_pdf()
    return pdf
