"""Load the extraction evaluation set and score extractions against it.

Shared by tests/test_extract.py (quality gates) and benchmarks/bench_extract.py (report).
Scores are token-level: bags of word tokens (``\\w+``, case-folded), precision = shared
tokens / extracted tokens, recall = shared tokens / expected tokens, as in trafilatura's
own evaluation.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

EVAL_DIR = Path(__file__).resolve().parent
PAGES_DIR = EVAL_DIR / "pages"
# The "present" the pages are extracted in: after every page date, so nothing is "future".
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
_TOKEN = re.compile(r"\w+")


@dataclass(frozen=True)
class EvalPage:
    file: str
    url: str
    content_type: str
    charset: str
    lang: str
    html_lang: str | None
    published: str
    date_via: str
    title: str
    boilerplate: tuple[str, ...]
    body: str

    @property
    def raw(self) -> bytes:
        return (PAGES_DIR / self.file).read_bytes()


def load_eval_set() -> list[EvalPage]:
    data = yaml.safe_load((EVAL_DIR / "expected.yml").read_text(encoding="utf-8"))
    return [EvalPage(**{**p, "boilerplate": tuple(p["boilerplate"]), "body": p["body"].rstrip("\n")}) for p in data["pages"]]


def tokens(text: str | None) -> Counter[str]:
    return Counter(_TOKEN.findall((text or "").casefold()))


def token_counts(extracted: str, expected: str) -> tuple[int, int, int]:
    """(shared, extracted, expected) token counts."""
    got, want = tokens(extracted), tokens(expected)
    return sum((got & want).values()), sum(got.values()), sum(want.values())


def prf(shared: int, n_got: int, n_want: int) -> tuple[float, float, float]:
    p = shared / n_got if n_got else 0.0
    r = shared / n_want if n_want else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def date_correct(got: datetime | None, expected: str) -> bool:
    """A full timestamp must match within a minute; a day-only expectation, the UTC day."""
    if got is None:
        return False
    if len(expected) == 10:
        return got.astimezone(UTC).date() == date.fromisoformat(expected)
    want = datetime.fromisoformat(expected.replace("Z", "+00:00"))
    return abs((got - want).total_seconds()) <= 60


def extract_one(page: EvalPage, raw: bytes | None = None) -> dict[str, Any]:
    """Run newsmon's decode + extract + language on one page, as the pipeline does."""
    from newsmon.extract import decode_html, detect_language, extract_page

    html, encoding = decode_html(page.raw if raw is None else raw, page.content_type)
    content = extract_page(html, page.url, feed_date=None, now=NOW)
    lang = detect_language(content.text, hint=content.html_lang)
    return {"html": html, "encoding": encoding, "content": content, "lang": lang}


def score(pages: list[EvalPage], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Micro (pooled tokens) and macro (mean per page) P/R/F1, date accuracy, per-page rows."""
    shared = got = want = 0
    rows = []
    for page, res in zip(pages, results, strict=True):
        s, g, w = token_counts(res["content"].text, page.body)
        shared, got, want = shared + s, got + g, want + w
        p, r, f = prf(s, g, w)
        rows.append({"file": page.file, "precision": p, "recall": r, "f1": f,
                     "date_ok": date_correct(res["content"].published_at, page.published)})  # fmt: skip
    mp, mr, mf = prf(shared, got, want)
    n = len(rows) or 1
    return {
        "pages": len(rows),
        "precision": mp,
        "recall": mr,
        "f1": mf,
        "macro_f1": sum(r["f1"] for r in rows) / n,
        "date_accuracy": sum(r["date_ok"] for r in rows) / n,
        "rows": rows,
    }
