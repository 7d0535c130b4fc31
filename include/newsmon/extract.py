"""Extract stage: decode a fetched page, take its main text and metadata, pick the date
and language, and fall back to the feed's own content when the page is worse.

Everything here is pure (bytes/strings in, dataclasses out) so it can be re-run on
archived pages without fetching again. trafilatura and htmldate are imported lazily:
they are heavy, and DAG files must parse fast.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from newsmon.normalize import clean_url, same_site

log = logging.getLogger(__name__)

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.I)
_TAG = re.compile(r"<[^>]+>")
_WS = re.compile(r"[ \t\r\f\v]+")

# Boilerplate that must never reach ``body``: WordPress comment forms in Arabic and
# English, share/newsletter/cookie furniture. Matched per paragraph, after extraction,
# as a second line of defence behind the XPath pruning below.
BOILERPLATE_PATTERNS = [
    r"^اترك (?:ردا?|تعليقا?)",
    r"لن يتم نشر عنوان بريدك الإلكتروني",
    r"الحقول الإلزامية مشار إليها",
    r"^(?:أضف|اكتب) تعليق",
    r"^إرسال التعليق",
    r"^شارك(?:\s+(?:على|عبر|المقال|الخبر))?(?:\s|:|$)",
    r"^اشترك في (?:النشرة|نشرتنا)",
    r"^(?:نستخدم|يستخدم هذا الموقع) (?:ملفات )?(?:تعريف الارتباط|الكوكيز)",
    r"^(?:مقالات|أخبار) ذات صلة",
    r"^الأكثر قراءة",
    r"^اقرأ (?:أيضا|أيضاً|المزيد)",
    r"^leave a (?:reply|comment)",
    r"your email address will not be published",
    r"required fields are marked",
    r"^(?:post comment|submit comment)$",
    r"^share (?:this|on)\b",
    r"^(?:sign up|subscribe) (?:for|to) (?:our )?newsletter",
    r"^we use cookies",
    r"^(?:related (?:articles|stories|posts)|read more|most read)\b",
]
_BOILERPLATE = re.compile("|".join(f"(?:{p})" for p in BOILERPLATE_PATTERNS), re.I)

# Class tokens that start boilerplate blocks ("share" matches "share-buttons" but not
# "has-share"; containers like "has-sidebar" must survive: the article lives inside them).
_BOILERPLATE_CLASS_PREFIXES = (
    "comment-respond", "comments-area", "comment-form", "share", "sharedaddy", "social", "related",
    "newsletter", "cookie", "breadcrumb", "ticker", "breaking", "sidebar", "widget", "most-read",
    "post-navigation", "nav-links", "jp-relatedposts", "yarpp", "subscribe", "advert", "ad-slot",
)  # fmt: skip
# ...unless the block holds the article itself (themes call wrappers "container sidebar-left").
_KEEPS_ARTICLE = "[not(.//article) and not(.//h1) and not(.//*[contains(@class, 'entry-content')])]"
PRUNE_XPATH = [
    "//div[@id='respond']",
    "//*[@id='comments']",
    "//form",
    "//nav",
    "//footer",
    "//aside",
    *(f"//*[contains(concat(' ', normalize-space(@class)), ' {p}')]{_KEEPS_ARTICLE}" for p in _BOILERPLATE_CLASS_PREFIXES),
]


@dataclass
class PageContent:
    """What one page yields."""

    text: str = ""
    title: str | None = None
    authors: list[str] = field(default_factory=list)
    sitename: str | None = None
    description: str | None = None
    image: str | None = None
    categories: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    canonical_url: str | None = None
    published_at: datetime | None = None
    date_source: str | None = None
    html_lang: str | None = None


# ---------------------------------------------------------------- decoding


def _normalize_charset(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None


def decode_html(body: bytes, content_type: str | None = None) -> tuple[str, str]:
    """Decode page bytes: BOM, then HTTP header charset, then ``<meta>``, then detection.

    A declared charset is trusted only if the bytes decode with it cleanly; a wrong
    declaration (common with windows-1256 pages served as UTF-8) falls through to the
    next source. Returns (text, encoding used).
    """
    for bom, enc in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if body.startswith(bom):
            return body[len(bom) :].decode(enc, "replace"), enc
    candidates: list[str] = []
    if content_type:
        m = _HEADER_CHARSET.search(content_type)
        if m and (enc := _normalize_charset(m[1])):
            candidates.append(enc)
    m2 = _META_CHARSET.search(body[:4096])
    if m2 and (enc := _normalize_charset(m2[1].decode("ascii", "ignore"))):
        candidates.append(enc)
    for enc in candidates:
        if enc in ("iso8859-1", "latin-1", "ascii") and _looks_non_latin(body):
            continue  # a Latin-1 declaration on Arabic bytes is a lie; let detection decide
        try:
            return body.decode(enc), enc
        except UnicodeDecodeError:
            continue
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(body, cp_isolation=["cp1256", "iso8859_6", "utf_8", "cp1252", "utf_16"]).best()
    if best is None:
        best = from_bytes(body).best()
    if best is not None:
        return str(best), best.encoding
    return body.decode("cp1256", "replace"), "cp1256"


def _looks_non_latin(body: bytes) -> bool:
    high = sum(1 for b in body[:20000] if b >= 0x80)
    return high > 200


# ---------------------------------------------------------------- metadata


def _html_tree(html: str) -> Any:
    import lxml.html

    try:
        return lxml.html.fromstring(html)
    except Exception:  # lxml raises a zoo of errors on hostile input
        return None


def parse_datetime(value: str | None) -> datetime | None:
    """ISO 8601 (with or without offset, date only allowed) to an aware UTC datetime."""
    if not value:
        return None
    v = value.strip()
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        try:
            from dateutil import parser as dparser

            dt = dparser.isoparse(v)
        except (ValueError, OverflowError, ImportError):
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _page_metadata(tree: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if tree is None:
        return meta
    root_lang = tree.get("lang") or tree.get("xml:lang")
    if root_lang:
        meta["html_lang"] = root_lang.split("-")[0].lower()
    for link in tree.xpath("//link[@rel='canonical'][@href]"):
        meta.setdefault("canonical", link.get("href"))
    for m in tree.xpath("//meta[@content]"):
        key = (m.get("property") or m.get("name") or m.get("itemprop") or "").lower()
        if key and key not in meta:
            meta[key] = m.get("content")
    for script in tree.xpath("//script[@type='application/ld+json']/text()"):
        try:
            data = json.loads(script)
        except (ValueError, TypeError):
            continue
        for obj in data if isinstance(data, list) else [data]:
            if isinstance(obj, dict) and obj.get("datePublished"):
                meta.setdefault("ld:datepublished", obj["datePublished"])
    return meta


def choose_date(
    meta: dict[str, Any], html: str, feed_date: datetime | None, *, now: datetime
) -> tuple[datetime | None, str | None]:
    """Publication date: page metadata, then htmldate (original date), then the feed; never future."""
    limit = now + timedelta(hours=1)
    for key, source in (
        ("article:published_time", "page_meta"),
        ("ld:datepublished", "page_jsonld"),
        ("datepublished", "page_meta"),
        ("pubdate", "page_meta"),
        ("date", "page_meta"),
    ):
        dt = parse_datetime(meta.get(key))
        if dt and datetime(2000, 1, 1, tzinfo=UTC) <= dt <= limit:
            return dt, source
    if html:
        try:
            from htmldate import find_date

            found = find_date(html, original_date=True, outputformat="%Y-%m-%dT%H:%M:%S", extensive_search=False)
        except Exception:  # htmldate on odd markup
            found = None
        dt = parse_datetime(found)
        if dt and dt <= limit:
            # htmldate often only knows the day: prefer the feed's time on that same day
            if feed_date and feed_date.date() == dt.date():
                return feed_date, "feed"
            return dt, "htmldate"
    if feed_date:
        return min(feed_date, now), "feed"
    return None, None


# ---------------------------------------------------------------- extraction


def strip_boilerplate(text: str) -> str:
    """Drop paragraphs that are comment forms, share bars, newsletter or cookie boxes."""
    kept = [p for p in text.split("\n") if p.strip() and not _BOILERPLATE.search(p.strip())]
    return "\n".join(kept).strip()


def html_to_text(fragment: str | None) -> str:
    """Plain text of a feed's HTML content (content:encoded) for fallback bodies."""
    if not fragment:
        return ""
    if "<" not in fragment:
        return strip_boilerplate(fragment.strip())
    tree = _html_tree(f"<div>{fragment}</div>")
    if tree is None:
        return strip_boilerplate(_TAG.sub(" ", fragment))
    for bad in tree.xpath("//script|//style"):
        bad.drop_tree()
    blocks = []
    for el in tree.iter():
        if el.tag in ("p", "li", "h1", "h2", "h3", "h4", "blockquote", "div") and not len(el.xpath("./p|./div|./li")):
            t = _WS.sub(" ", el.text_content()).strip()
            if t:
                blocks.append(t)
    if not blocks:
        blocks = [_WS.sub(" ", tree.text_content()).strip()]
    return strip_boilerplate("\n".join(blocks))


def extract_page(html: str, url: str, *, feed_date: datetime | None = None, now: datetime | None = None) -> PageContent:
    """Main text and metadata of one article page."""
    import trafilatura

    now = now or datetime.now(UTC)
    tree = _html_tree(html)
    meta = _page_metadata(tree)
    doc = None
    try:
        doc = trafilatura.bare_extraction(
            html,
            url=url,
            favor_precision=True,
            include_comments=False,
            include_tables=False,
            with_metadata=True,
            prune_xpath=PRUNE_XPATH,
            deduplicate=False,
        )
    except Exception as exc:  # trafilatura on hostile markup: keep going with metadata only
        log.warning("trafilatura failed url=%s error=%s", url, exc)
    text = strip_boilerplate(getattr(doc, "text", None) or "") if doc is not None else ""
    published, date_source = choose_date(meta, html, feed_date, now=now)
    canonical = None
    for candidate in (meta.get("canonical"), meta.get("og:url")):
        if candidate:
            from urllib.parse import urljoin

            absolute = urljoin(url, candidate)
            if absolute.startswith(("http://", "https://")) and same_site(absolute, url):
                canonical = clean_url(absolute)
                break
    authors: list[str] = []
    raw_author = (getattr(doc, "author", None) if doc is not None else None) or meta.get("author")
    if raw_author:
        authors = [a.strip() for a in re.split(r";|\s+و\s+|\s+and\s+", raw_author) if a.strip()]
    return PageContent(
        text=text,
        title=(getattr(doc, "title", None) if doc is not None else None) or meta.get("og:title"),
        authors=authors,
        sitename=(getattr(doc, "sitename", None) if doc is not None else None) or meta.get("og:site_name"),
        description=(getattr(doc, "description", None) if doc is not None else None) or meta.get("og:description"),
        image=(getattr(doc, "image", None) if doc is not None else None) or meta.get("og:image"),
        categories=list(getattr(doc, "categories", None) or []) if doc is not None else [],
        tags=list(getattr(doc, "tags", None) or []) if doc is not None else [],
        canonical_url=canonical,
        published_at=published,
        date_source=date_source,
        html_lang=meta.get("html_lang"),
    )


@lru_cache(maxsize=1)
def _langid() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str, *, hint: str | None = None) -> str | None:
    """Language of the text (ISO 639-1). The text wins over the page's lang attribute;
    the hint is used only when the text is too short to judge."""
    sample = (text or "")[:3000]
    letters = sum(ch.isalpha() for ch in sample)
    if letters < 20:
        return hint
    lang, prob = _langid().classify(sample)
    if prob < 0.5 and hint:
        return hint
    return str(lang)
