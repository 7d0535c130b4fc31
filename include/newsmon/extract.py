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
import threading
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
_XML_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

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
# trafilatura's fast mode skips its fallback extractors (readability, jusText); on the
# evaluation set (tests/extraction_eval) it loses nothing and halves the time.
EXTRACT_FAST = True
FAST_RETRY_BELOW_CHARS = 400

# Class tokens that start boilerplate blocks ("share" matches "share-buttons" but not
# "has-share"; containers like "has-sidebar" must survive: the article lives inside them).
_BOILERPLATE_CLASS_PREFIXES = (
    "comment-respond", "comments-area", "comment-form", "share", "sharedaddy", "social", "related",
    "newsletter", "cookie", "breadcrumb", "ticker", "breaking", "sidebar", "widget", "most-read",
    "post-navigation", "nav-links", "jp-relatedposts", "yarpp", "subscribe", "advert", "ad-slot",
)  # fmt: skip
# ...unless the block holds the article itself (themes call wrappers "container sidebar-left").
_KEEPS_ARTICLE = "[not(.//article) and not(.//h1) and not(.//*[contains(@class, 'entry-content')])]"
# The rules as XPath (for trafilatura's ``prune_xpath`` or ad-hoc use); extract_page applies
# the same rules with prune_boilerplate, in one walk of the tree.
PRUNE_XPATH = [
    "//div[@id='respond']",
    "//*[@id='comments']",
    "//form",
    "//nav",
    "//footer",
    "//aside",
    *(f"//*[contains(concat(' ', normalize-space(@class)), ' {p}')]{_KEEPS_ARTICLE}" for p in _BOILERPLATE_CLASS_PREFIXES),
]


_PRUNE_TAGS = frozenset({"form", "nav", "footer", "aside"})
_PRUNE_IDS = frozenset({"respond", "comments"})
_KEEPER_XPATH = "//article|//h1|//*[contains(@class, 'entry-content')]"


def prune_boilerplate(tree: Any) -> int:
    """Remove the blocks PRUNE_XPATH describes, in one walk of the tree (tails kept).

    Same rules as the XPath list, which trafilatura would evaluate expression by
    expression (~20 scans of the page, the costliest step of extraction): forms, nav,
    footer, aside, #respond/#comments, and elements with a class token starting with a
    boilerplate prefix unless they hold the article (an <article>, the <h1> or the
    WordPress entry-content). Returns how many blocks were removed.
    """
    keepers: set[Any] = set()
    for el in tree.xpath(_KEEPER_XPATH):
        keepers.add(el)
        keepers.update(el.iterancestors())
    gone: set[Any] = set()
    removed = 0
    for el in list(tree.iter()):
        tag = el.tag
        if not isinstance(tag, str):  # comments, processing instructions
            continue
        if tag not in _PRUNE_TAGS and el.get("id") not in _PRUNE_IDS:
            cls = el.get("class")
            if not cls or el in keepers or not any(tok.startswith(_BOILERPLATE_CLASS_PREFIXES) for tok in cls.split()):
                continue
        if any(a in gone for a in el.iterancestors()):
            continue  # inside a block already removed
        gone.add(el)
        el.drop_tree()  # lxml.html: keeps the tail text
        removed += 1
    return removed


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


def _jsonld_objects(data: Any) -> list[dict[str, Any]]:
    """Every object of a JSON-LD block, @graph and nested lists flattened."""
    out: list[dict[str, Any]] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            out.append(item)
            if isinstance(item.get("@graph"), list):
                stack.extend(reversed(item["@graph"]))
    return out


_ARTICLE_TYPES = {"article", "newsarticle", "reportagenewsarticle", "blogposting", "analysisnewsarticle", "webpage"}


def _names(value: Any) -> list[str]:
    """Names from a JSON-LD person/organisation value (string, object or list)."""
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        name = v.get("name") if isinstance(v, dict) else v
        if isinstance(name, str) and name.strip():
            out.append(name.strip())
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def _add(meta: dict[str, Any], key: str, values: list[str]) -> None:
    lst = meta.setdefault(key, [])
    lst.extend(v for v in values if v not in lst)


def _page_metadata(tree: Any) -> dict[str, Any]:
    """Metadata from ``<meta>``, ``<link>``, JSON-LD and a few conventional elements.

    Single values: first one wins (key = property/name/itemprop, lower-cased).
    List values under ``list:<name>``: article tags/sections, JSON-LD authors/keywords.
    """
    meta: dict[str, Any] = {}
    if tree is None:
        return meta
    root_lang = tree.get("lang") or tree.get("xml:lang")
    if root_lang:
        meta["html_lang"] = root_lang.split("-")[0].lower()
    for link in tree.iterfind(".//link[@href]"):
        if (link.get("rel") or "").lower() == "canonical":
            meta.setdefault("canonical", link.get("href"))
            break
    for m in tree.iterfind(".//meta[@content]"):
        key = (m.get("property") or m.get("name") or m.get("itemprop") or "").lower()
        if not key:
            continue
        content = (m.get("content") or "").strip()
        if key in ("article:tag", "article:section", "keywords", "news_keywords"):
            _add(meta, f"list:{key}", _strings(content) if "keywords" in key else [content] if content else [])
        if key not in meta and content:
            meta[key] = content
    title = tree.find(".//title")
    if title is not None and title.text:
        meta.setdefault("html:title", " ".join(title.text.split()))
    h1s = [" ".join(h.text_content().split()) for h in tree.iterfind(".//h1")]
    meta["html:h1"] = [h for h in h1s if h]
    for script in tree.iterfind(".//script[@type='application/ld+json']"):
        try:
            data = json.loads(script.text or "")
        except (ValueError, TypeError):
            continue
        for obj in _jsonld_objects(data):
            kind = obj.get("@type")
            kinds = {str(k).lower() for k in (kind if isinstance(kind, list) else [kind])}
            if not kinds & _ARTICLE_TYPES:
                continue
            if obj.get("datePublished") and "webpage" not in kinds:
                meta.setdefault("ld:datepublished", obj["datePublished"])
            elif obj.get("datePublished"):
                meta.setdefault("ld:page_datepublished", obj["datePublished"])
            if isinstance(obj.get("headline"), str):
                meta.setdefault("ld:headline", obj["headline"].strip())
            _add(meta, "list:ld:author", _names(obj.get("author")))
            _add(meta, "list:ld:section", _strings(obj.get("articleSection")))
            _add(meta, "list:ld:keywords", _strings(obj.get("keywords")))
            publisher = _names(obj.get("publisher"))
            if publisher:
                meta.setdefault("ld:publisher", publisher[0])
            image = obj.get("image")
            if isinstance(image, dict):
                image = image.get("url")
            if isinstance(image, list):
                image = image[0] if image and isinstance(image[0], str) else None
            if isinstance(image, str):
                meta.setdefault("ld:image", image)
    cats = [" ".join(a.text_content().split()) for a in tree.xpath(".//a[contains(@rel, 'category')]")]
    tags = [" ".join(a.text_content().split()) for a in tree.xpath(".//a[@rel='tag']")]
    _add(meta, "list:html:category", [c for c in cats if c])
    _add(meta, "list:html:tag", [t for t in tags if t])
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
        ("ld:page_datepublished", "page_jsonld"),
        ("pubdate", "page_meta"),
        ("date", "page_meta"),
    ):
        dt = parse_datetime(meta.get(key))
        if dt and datetime(2000, 1, 1, tzinfo=UTC) <= dt <= limit:
            return dt, source
    if html:
        try:
            from htmldate import find_date

            with _EXTRACT_LOCK:
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
    fragment = _XML_CONTROL.sub(" ", fragment)  # issue 8: lxml refuses them when it moves text (drop_tree)
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


def _parse_page(html: str) -> Any:
    """Parse once, with trafilatura's own loader (same parser settings, same repairs)."""
    from trafilatura.utils import load_html

    try:
        return load_html(html)
    except Exception:  # hostile markup
        return None


def _drop_leading_title(text: str, titles: list[str]) -> str:
    """The headline is ``title``, not body: drop leading lines that repeat it."""
    from newsmon.normalize import normalize_text

    wanted = {normalize_text(t) for t in titles if t}
    lines = text.split("\n")
    while lines and normalize_text(lines[0]) in wanted:
        lines.pop(0)
    return "\n".join(lines)


def _first(*values: Any) -> str | None:
    for v in values:
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


# trafilatura and htmldate evaluate module-level precompiled lxml XPath objects, which lxml
# documents as not thread-safe: two threads extracting at once (two passes in one process)
# were seen to swap or lose text. Extraction is CPU-bound under the GIL anyway, so one lock
# per process costs nothing and makes the stage safe in threaded hosts.
_EXTRACT_LOCK = threading.RLock()


def _trafilatura_text(trafilatura: Any, tree: Any, url: str, *, fast: bool) -> str:
    try:
        with _EXTRACT_LOCK:
            doc = trafilatura.bare_extraction(
            tree,
                url=url,
                fast=fast,
                favor_precision=True,
                include_comments=False,
                include_tables=False,
                with_metadata=False,
                deduplicate=False,
            )
    except Exception as exc:  # trafilatura on hostile markup: keep going with metadata only
        log.warning("trafilatura failed url=%s error=%s", url, exc)
        return ""
    return strip_boilerplate(getattr(doc, "text", None) or "") if doc is not None else ""


def extract_page(html: str, url: str, *, feed_date: datetime | None = None, now: datetime | None = None) -> PageContent:
    """Main text and metadata of one article page.

    The page is parsed once: metadata and the date are read from the tree, then the
    boilerplate blocks are pruned in place and trafilatura extracts the text from that
    same tree (its own metadata pass is skipped: we already have what it would find).
    """
    import trafilatura

    now = now or datetime.now(UTC)
    tree = _parse_page(html)
    meta = _page_metadata(tree)
    published, date_source = choose_date(meta, html, feed_date, now=now)
    text = ""
    if tree is not None:
        prune_boilerplate(tree)
        text = _trafilatura_text(trafilatura, tree, url, fast=EXTRACT_FAST)
        if EXTRACT_FAST and len(text) < FAST_RETRY_BELOW_CHARS:
            # fast mode has no fallback extractors: odd layouts (table-based portals) come
            # back empty or short; the full cascade gets a second look (trafilatura copies
            # the tree it is given, so ours is intact)
            text = max(text, _trafilatura_text(trafilatura, tree, url, fast=False), key=len)
    title = _first(meta.get("og:title"), meta.get("ld:headline"), *(meta.get("html:h1") or [])[:1], meta.get("html:title"))
    if text:
        text = _drop_leading_title(text, [title or "", *(meta.get("html:h1") or []), meta.get("html:title") or ""])
    canonical = None
    for candidate in (meta.get("canonical"), meta.get("og:url")):
        if candidate:
            from urllib.parse import urljoin

            try:  # issue 8: a hostile href ("http://[bad", bad port) must not sink the page
                absolute = urljoin(url, candidate)
                if absolute.startswith(("http://", "https://")) and same_site(absolute, url):
                    canonical = clean_url(absolute)
                    break
            except ValueError:
                continue
    authors: list[str] = []
    raw_author = meta.get("author") or meta.get("article:author")
    if raw_author and not raw_author.startswith(("http://", "https://")):
        authors = [a.strip() for a in re.split(r";|,|\s+و\s+|\s+and\s+", raw_author) if a.strip()]
    if not authors:
        authors = list(meta.get("list:ld:author") or [])
    return PageContent(
        text=text,
        title=title,
        authors=authors,
        sitename=_first(meta.get("og:site_name"), meta.get("ld:publisher"), meta.get("application-name")),
        description=_first(meta.get("og:description"), meta.get("description"), meta.get("twitter:description")),
        image=_first(meta.get("og:image"), meta.get("twitter:image"), meta.get("ld:image")),
        categories=_merge(meta, "list:article:section", "list:ld:section", "list:html:category"),
        tags=_merge(meta, "list:article:tag", "list:ld:keywords", "list:keywords", "list:news_keywords", "list:html:tag"),
        canonical_url=canonical,
        published_at=published,
        date_source=date_source,
        html_lang=meta.get("html_lang"),
    )


def _merge(meta: dict[str, Any], *keys: str) -> list[str]:
    out: list[str] = []
    for k in keys:
        for v in meta.get(k) or []:
            if v not in out:
                out.append(v)
    return out[:50]


@lru_cache(maxsize=1)
def _langid() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str, *, hint: str | None = None) -> str | None:
    """Language of the text (ISO 639-1). The text wins over the page's lang attribute;
    the hint is used only when the text is too short to judge."""
    sample = (text or "")[:1000]  # plenty for news prose; py3langid walks every byte in Python
    letters = sum(ch.isalpha() for ch in sample)
    if letters < 20:
        return hint
    lang, prob = _langid().classify(sample)
    if prob < 0.5 and hint:
        return hint
    return str(lang)
