"""Topic stage: multilingual term rules (topics.yml) matched on normalised text.

In the spirit of Europe Media Monitor's category definitions: each topic has terms per
language, optional exclusion terms and boolean rules over term groups; a title match
weighs more than a body match; a minimum score decides membership; a child topic
implies its parent; the matched terms are kept as evidence.

Arabic words carry proclitics (و ف ب ك ل and the article ال): سوريا matches وسوريا,
بسوريا, لسوريا and فسوريا, but never the inside of a longer word (سورياليه). English
matches case-insensitively on word boundaries with plural/possessive endings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsmon.config import line_of, load_yaml_file
from newsmon.errors import ConfigError
from newsmon.models import TopicMatch
from newsmon.normalize import normalize_text

SLUG = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_SLUGS = frozenset({"unclassified"})
_ARABIC = re.compile("[\u0600-\u06ff]")
TITLE_WEIGHT = 3.0
BODY_WEIGHT = 1.0


@dataclass(frozen=True)
class Topic:
    slug: str
    label: str
    parent: str | None
    terms: dict[str, tuple[str, ...]]
    exclude: tuple[str, ...] = ()
    require_all: tuple[tuple[str, ...], ...] = ()  # every group must match somewhere
    require_any: tuple[tuple[str, ...], ...] = ()  # at least one group must match
    forbid: tuple[tuple[str, ...], ...] = ()  # no group may match
    min_score: float = 2.0


@dataclass
class Taxonomy:
    topics: dict[str, Topic]
    _compiled: dict[str, tuple[re.Pattern[str], re.Pattern[str] | None, tuple[tuple[re.Pattern[str], ...], ...]]] = field(
        default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        for t in self.topics.values():
            all_terms = [term for terms in t.terms.values() for term in terms]
            self._compiled[t.slug] = (
                compile_terms(all_terms),
                compile_terms(t.exclude) if t.exclude else None,
                (
                    tuple(compile_terms(g) for g in t.require_all),
                    tuple(compile_terms(g) for g in t.require_any),
                    tuple(compile_terms(g) for g in t.forbid),
                ),
            )

    @property
    def slugs(self) -> list[str]:
        return list(self.topics)

    def ancestors(self, slug: str) -> list[str]:
        out = []
        parent = self.topics[slug].parent
        while parent:
            out.append(parent)
            parent = self.topics[parent].parent
        return out

    def classify(self, title: str | None, body: str | None, *, normalized: bool = False) -> list[TopicMatch]:
        """Topics of one article, parents implied by children, sorted by slug."""
        nt = title if normalized else normalize_text(title)
        nb = body if normalized else normalize_text(body)
        nt, nb = nt or "", nb or ""
        matched: dict[str, TopicMatch] = {}
        for slug, (pattern, exclude, groups) in self._compiled.items():
            title_hits = [m.group(0) for m in pattern.finditer(nt)]
            body_hits = [m.group(0) for m in pattern.finditer(nb)]
            score = TITLE_WEIGHT * len(title_hits) + BODY_WEIGHT * len(body_hits)
            if score < self.topics[slug].min_score:
                continue
            if exclude is not None and (exclude.search(nt) or exclude.search(nb)):
                continue
            all_groups, any_groups, none_groups = groups

            def hit(g: re.Pattern[str]) -> bool:
                return bool(g.search(nt) or g.search(nb))

            if not all(hit(g) for g in all_groups):
                continue
            if any_groups and not any(hit(g) for g in any_groups):
                continue
            if any(hit(g) for g in none_groups):
                continue
            terms = tuple(sorted({h.strip() for h in title_hits + body_hits}))
            matched[slug] = TopicMatch(slug, score, terms)
        for slug in list(matched):
            for parent in self.ancestors(slug):
                if parent not in matched:
                    child = matched[slug]
                    matched[parent] = TopicMatch(parent, child.score, (f"<{slug}>", *child.terms))
        return [matched[s] for s in sorted(matched)]


def _term_regex(term: str) -> str:
    """Regex for one normalised term (trailing ``*`` = any word ending)."""
    t = normalize_text(term)
    wildcard = t.endswith("*")
    t = t.rstrip("*").strip()
    if not t:
        raise ValueError("empty term")
    body = r"\s+".join(re.escape(w) for w in t.split())
    tail = r"\w*" if wildcard else ""
    if _ARABIC.search(t):
        # optional conjunction, then preposition and/or article; لل = ل + ال
        if t.startswith("ال"):
            rest = r"\s+".join(re.escape(w) for w in t[2:].split())
            core = rf"(?:[وف]?[بك]?{body}|[وف]?لل{rest})"
        else:
            core = rf"[وف]?(?:[بك]?ال|لل|[بلك])?{body}"
        return rf"(?<!\w){core}{tail}(?!\w)"
    suffix = tail or r"(?:'s|’s|s'|es|s)?"
    return rf"(?<!\w){body}{suffix}(?!\w)"


def compile_terms(terms: Sequence[str]) -> re.Pattern[str]:
    parts = sorted({_term_regex(t) for t in terms}, key=len, reverse=True)
    return re.compile("|".join(parts) if parts else r"(?!x)x")


# ---------------------------------------------------------------- loading and validation


def load_taxonomy(path: Path) -> Taxonomy:
    """Read and validate topics.yml; errors name the file, line and topic."""
    data, lines = load_yaml_file(path)
    items = data.get("topics") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}, line 1: expected a non-empty top-level 'topics:' list")
    topics: dict[str, Topic] = {}
    for i, item in enumerate(items):

        def err(msg: str, *sub: str | int, _i: int = i, _item: Any = item) -> ConfigError:
            slug = _item.get("slug") if isinstance(_item, dict) else None
            who = f" (topic {slug!r})" if slug else ""
            return ConfigError(f"{path}, line {line_of(lines, ('topics', _i, *sub))}{who}: {msg}")

        if not isinstance(item, dict):
            raise err("each topic is a mapping with slug, label and terms")
        unknown = set(item) - {"slug", "label", "parent", "terms", "exclude", "rules", "min_score"}
        if unknown:
            raise err(f"unknown key(s) {sorted(unknown)}")
        slug = item.get("slug")
        if not isinstance(slug, str) or not SLUG.match(slug) or len(slug) > 40:
            raise err("'slug' must match ^[a-z][a-z0-9_]*$ (it becomes a partition name)", "slug")
        if slug in RESERVED_SLUGS:
            raise err(f"'{slug}' is reserved for articles matching no topic", "slug")
        if slug in topics:
            raise err(f"duplicate slug {slug!r}", "slug")
        terms = item.get("terms")
        if not isinstance(terms, dict) or not terms:
            raise err("'terms' must map language codes to lists of terms", "terms")
        clean_terms: dict[str, tuple[str, ...]] = {}
        for lang, words in terms.items():
            if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
                raise err(f"terms.{lang} must be a list of non-empty strings", "terms", str(lang))
            clean_terms[str(lang)] = tuple(words)
        exclude = item.get("exclude") or []
        if not isinstance(exclude, list) or not all(isinstance(w, str) and w.strip() for w in exclude):
            raise err("'exclude' must be a list of terms", "exclude")
        rules = item.get("rules") or {}
        parsed: dict[str, tuple[tuple[str, ...], ...]] = {"all": (), "any": (), "none": ()}
        if rules:
            if not isinstance(rules, dict) or set(rules) - set(parsed):
                raise err("'rules' takes all/any/none: lists of term groups ([[terms...], ...])", "rules")
            for kind in parsed:
                groups_raw = rules.get(kind) or []
                if not isinstance(groups_raw, list) or not all(isinstance(g, list) and g for g in groups_raw):
                    raise err(f"'rules.{kind}' must be a list of non-empty term lists", "rules", kind)
                parsed[kind] = tuple(tuple(str(w) for w in g) for g in groups_raw)
        groups = parsed["all"] + parsed["any"] + parsed["none"]
        min_score = item.get("min_score", 2.0)
        if not isinstance(min_score, int | float) or min_score <= 0:
            raise err("'min_score' must be a positive number", "min_score")
        label = item.get("label") or slug
        try:
            for words in [*clean_terms.values(), exclude, *groups]:
                compile_terms(list(words))
        except (ValueError, re.error) as exc:
            raise err(f"bad term: {exc}", "terms") from exc
        topics[slug] = Topic(
            slug=slug,
            label=str(label),
            parent=item.get("parent"),
            terms=clean_terms,
            exclude=tuple(exclude),
            require_all=parsed["all"],
            require_any=parsed["any"],
            forbid=parsed["none"],
            min_score=float(min_score),
        )
    for i, t in enumerate(topics.values()):
        if t.parent is not None and t.parent not in topics:
            raise ConfigError(
                f"{path}, line {line_of(lines, ('topics', i, 'parent'))} (topic {t.slug!r}): unknown parent {t.parent!r}"
            )
    for t in topics.values():  # cycles
        seen = {t.slug}
        p = t.parent
        while p:
            if p in seen:
                raise ConfigError(f"{path}: topic {t.slug!r} has a parent cycle through {p!r}")
            seen.add(p)
            p = topics[p].parent
    return Taxonomy(topics)


# ---------------------------------------------------------------- database


def partition_name(slug: str) -> str:
    if not SLUG.match(slug) or slug in RESERVED_SLUGS:
        raise ValueError(f"invalid topic slug {slug!r}")
    return f"articles_{slug}"


def sync_topics(conn: Connection, taxonomy: Taxonomy) -> list[str]:
    """Mirror the taxonomy into news.topics and create missing partitions.

    A new topic's rows that already sit in the DEFAULT partition are moved into the new
    partition in the same transaction (attach would fail otherwise). Topics removed from
    the file are marked inactive; their partitions and rows stay.
    """
    created = []
    for t in taxonomy.topics.values():
        conn.execute(
            sa.text(
                """
                INSERT INTO news.topics (slug, label, parent, active) VALUES (:s, :l, :p, true)
                ON CONFLICT (slug) DO UPDATE SET label = EXCLUDED.label, parent = EXCLUDED.parent,
                    active = true, updated_at = now()
                """
            ),
            {"s": t.slug, "l": t.label, "p": t.parent},
        )
        name = partition_name(t.slug)  # validated identifier: safe to splice into DDL
        exists = conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": f"news.{name}"}).scalar()
        if exists:
            continue
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(72850002)"))
        if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": f"news.{name}"}).scalar():
            continue
        conn.exec_driver_sql(f"CREATE TABLE news.{name} (LIKE news.articles INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)")
        # storage parameters are per partition (0016: toast_tuple_target): the DEFAULT one's
        options = conn.execute(sa.text("SELECT reloptions FROM pg_class WHERE oid = 'news.articles_unclassified'::regclass")).scalar()
        if options:
            conn.exec_driver_sql(f"ALTER TABLE news.{name} SET ({', '.join(options)})")
        conn.exec_driver_sql(
            f"WITH moved AS (DELETE FROM news.articles_unclassified WHERE topic = %(slug)s RETURNING *) "
            f"INSERT INTO news.{name} SELECT * FROM moved",
            {"slug": t.slug},
        )
        conn.exec_driver_sql(f"ALTER TABLE news.articles ATTACH PARTITION news.{name} FOR VALUES IN (%(slug)s)", {"slug": t.slug})
        created.append(name)
    conn.execute(
        sa.text("UPDATE news.topics SET active = false, updated_at = now() WHERE active AND NOT (slug = ANY(:s))"),
        {"s": taxonomy.slugs},
    )
    return created


def _copy_columns(conn: Connection) -> list[str]:
    cols = conn.execute(
        sa.text(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'news' AND table_name = 'articles' "
            "AND is_generated = 'NEVER' ORDER BY ordinal_position"
        )
    ).scalars()
    return [c for c in cols if c not in ("topic", "matched_terms", "topic_score")]


def reclassify(
    engine: Engine, taxonomy: Taxonomy, *, since: datetime | None = None, only_topic: str | None = None, batch: int = 500
) -> dict[str, int]:
    """Re-apply the current rules to stored articles; move rows between partitions.

    Each article is rewritten in its batch's transaction: rows for its new topics are
    inserted (copied from an existing row), rows for topics it no longer matches are
    deleted. Unchanged articles are not touched, so a re-run changes nothing.
    ``only_topic='unclassified'`` limits the work to the DEFAULT partition (what
    ``topics sync`` does after adding a topic).
    """
    stats = {"articles": 0, "changed": 0}
    last = 0
    with engine.connect() as conn:
        cols = _copy_columns(conn)
    col_list = ", ".join(cols)
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                sa.text(
                    """
                    SELECT article_id, array_agg(topic ORDER BY topic) AS topics, min(title) AS title, min(body) AS body
                    FROM news.articles
                    WHERE article_id > :last
                      AND (CAST(:since AS timestamptz) IS NULL OR published_at >= :since)
                      AND (CAST(:only AS text) IS NULL OR article_id IN (
                           SELECT article_id FROM news.articles WHERE topic = :only AND article_id > :last))
                    GROUP BY article_id ORDER BY article_id LIMIT :n
                    """
                ),
                {"last": last, "since": since, "only": only_topic, "n": batch},
            ).all()
            if not rows:
                break
            for r in rows:
                stats["articles"] += 1
                matches = taxonomy.classify(r.title, r.body)
                wanted = {m.slug: m for m in matches}
                new_topics = sorted(wanted) or ["unclassified"]
                if new_topics == sorted(r.topics):
                    continue
                stats["changed"] += 1
                for slug in new_topics:
                    m = wanted.get(slug)
                    conn.execute(
                        sa.text(
                            f"""
                            INSERT INTO news.articles ({col_list}, topic, matched_terms, topic_score)
                            SELECT {col_list}, :topic, :terms, :score FROM news.articles
                            WHERE article_id = :id AND topic = :from_topic
                            ON CONFLICT (topic, article_id) DO UPDATE
                                SET matched_terms = EXCLUDED.matched_terms, topic_score = EXCLUDED.topic_score
                            """
                        ),
                        {"topic": slug, "terms": list(m.terms) if m else [], "score": m.score if m else None,
                         "id": r.article_id, "from_topic": r.topics[0]},
                    )  # fmt: skip
                conn.execute(
                    sa.text("DELETE FROM news.articles WHERE article_id = :id AND NOT (topic = ANY(:keep))"),
                    {"id": r.article_id, "keep": new_topics},
                )
            last = rows[-1].article_id
    return stats
