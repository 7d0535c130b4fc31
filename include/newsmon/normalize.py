"""Text and URL normalisation used for matching and deduplication.

Display text stays exactly as published; these functions produce the *comparison*
forms. They are pure and cheap, and are applied once per article.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Arabic harakat/tashkeel (fathatan..sukun, superscript alef), Quranic marks, and tatweel.
_TASHKEEL = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e8\u06ea-\u06ed]")
_TATWEEL = "\u0640"
# Invisible formatting characters that can hide inside words (ZWJ/ZWNJ, bidi controls, BOM).
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\u00ad]")
_CHAR_MAP = str.maketrans(
    {
        "أ": "ا",
        "إ": "ا",
        "آ": "ا",
        "ٱ": "ا",
        "ى": "ي",
        "ة": "ه",
        "ک": "ك",
        "ی": "ي",
        "ي": "ي",
        **{chr(0x0660 + i): str(i) for i in range(10)},  # Arabic-Indic digits
        **{chr(0x06F0 + i): str(i) for i in range(10)},  # Persian digits
    }
)
_WS = re.compile(r"\s+")


def normalize_text(text: str | None) -> str:
    """Comparison form: NFKC, no tashkeel/tatweel/invisibles, unified alef/ya/ta marbuta,
    ASCII digits, Persian letters to Arabic, folded whitespace, case-folded Latin."""
    if not text:
        return ""
    t = unicodedata.normalize("NFKC", text)
    t = _INVISIBLE.sub("", t)
    t = _TASHKEEL.sub("", t).replace(_TATWEEL, "")
    t = t.translate(_CHAR_MAP)
    t = _WS.sub(" ", t).strip()
    return t.casefold()


def content_hash(normalized_body: str) -> str:
    """Exact-duplicate key of a body, computed on its normalised form."""
    return hashlib.sha256(normalized_body.encode("utf-8")).hexdigest()


_TRACKING_PARAMS = frozenset(
    {
        "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "mc_cid", "mc_eid", "yclid",
        "igshid", "_ga", "_gl", "ref", "ref_src", "cmpid", "ocid", "spm", "amp", "output",
    }
)  # fmt: skip
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _is_tracking(name: str) -> bool:
    n = name.lower()
    return n.startswith(("utm_", "at_", "pk_", "mtm_", "hsa_")) or n in _TRACKING_PARAMS


def clean_url(url: str) -> str:
    """The URL without fragment and tracking parameters, host lower-cased; still fetchable."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port if parts.port and parts.port != _DEFAULT_PORTS.get(scheme) else None
    netloc = host if port is None else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        netloc = f"[{host}]" if port is None else f"[{host}]:{port}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k)]
    return urlunsplit((scheme, netloc, parts.path or "/", urlencode(query), ""))


def url_key(url: str) -> str:
    """Lossy dedup key: scheme-less, lower-case host without www./m., default ports,
    fragments and tracking parameters dropped, query sorted, trailing slash dropped."""
    parts = urlsplit(clean_url(url))
    host = parts.hostname or ""
    for prefix in ("www.", "m.", "amp."):
        if host.startswith(prefix) and host.count(".") >= 2:
            host = host[len(prefix) :]
            break
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    path = parts.path.rstrip("/") or "/"
    return f"{netloc}{path}" + (f"?{query}" if query else "")


def source_domain(url: str) -> str:
    """Registrable-ish source name: the host without www./m. (ports kept for local servers)."""
    return url_key(url).split("/", 1)[0]


def same_site(a: str, b: str) -> bool:
    return source_domain(a) == source_domain(b)
