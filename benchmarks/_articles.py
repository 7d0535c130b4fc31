"""Synthetic but realistic articles for load/dedup benchmarks (Arabic and English prose
from the sample corpus, recombined so every article is distinct)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from newsmon.config import PROJECT_ROOT
from newsmon.dedup import signature
from newsmon.models import Article, TopicMatch
from newsmon.normalize import content_hash, normalize_text, url_key

_SENTENCES: list[str] = []


def _sentences() -> list[str]:
    if not _SENTENCES:
        import yaml

        items = yaml.safe_load((PROJECT_ROOT / "include/sample/expected.yml").read_text(encoding="utf-8"))["items"]
        for it in items.values():
            for k in ("body_first_sentence", "body_last_sentence", "title"):
                if it.get(k):
                    _SENTENCES.append(it[k])
    return _SENTENCES


def make_articles(n: int, *, seed: int = 7, with_signature: bool = True) -> list[Article]:
    rng = random.Random(seed)
    pool = _sentences()
    vocab = sorted({w for s in pool for w in s.split()})
    topics = ["syria", "idlib", "russia", "turkey"]
    out = []
    base = datetime(2026, 11, 1, tzinfo=UTC)
    for i in range(n):
        sents = rng.sample(pool, 8)
        # real sentences' words in a fresh order: realistic text, but distinct articles share
        # no long passages (shared passages would make them near-duplicates, correctly)
        body = "\n".join(" ".join(rng.sample(vocab, 30)) + "." for _ in range(8))
        norm = normalize_text(body)
        url = f"https://site{i % 50}.example/news/{i}"
        chosen = rng.sample(topics, rng.choice([1, 1, 2]))
        if "idlib" in chosen and "syria" not in chosen:
            chosen.append("syria")
        a = Article(
            entry_id=None,  # type: ignore[arg-type]
            feed_id=None,  # type: ignore[arg-type]
            url=url,
            canonical_url=url,
            url_key=url_key(url),
            source_domain=f"site{i % 50}.example",
            title=f"{sents[0][:180]} ({i})",
            summary=None,
            body=body,
            body_source="page",
            lang="ar" if i % 3 else "en",
            authors=["وكالات"],
            published_at=base + timedelta(minutes=i),
            date_source="page_meta",
            fetched_at=base,
            content_hash=content_hash(norm),
            norm_title=normalize_text(f"{sents[0][:180]} ({i})"),
            norm_body=norm,
            topics=[TopicMatch(t, 3.0, (t,)) for t in sorted(chosen)],
        )
        if with_signature:
            a.signature = signature(norm)
        out.append(a)
    return out
