from newsmon.normalize import clean_url, content_hash, normalize_text, source_domain, url_key


def test_arabic_normalisation_unifies_variants():
    assert normalize_text("إدلب") == normalize_text("ادلب") == normalize_text("أدلب")
    assert normalize_text("سوريّة") == normalize_text("سورية") == "سوريه"
    assert normalize_text("مـــصـر") == "مصر"  # tatweel
    assert normalize_text("مُستشفى") == "مستشفي"  # tashkeel and alef maqsura
    assert normalize_text("عام ٢٠٢٠") == "عام 2020"
    assert normalize_text("۱۳ جندیا") == "13 جنديا"  # Persian digits and ya
    assert normalize_text("کتاب") == "كتاب"


def test_latin_casefold_and_whitespace():
    assert normalize_text("  Syria's\tNORTH\n west ") == "syria's north west"


def test_invisible_characters_do_not_hide_words():
    assert normalize_text("إد\u200dلب") == normalize_text("إدلب")
    assert normalize_text("\u202eSyria") == "syria"


def test_display_text_is_not_needed_for_hash_equality():
    a = content_hash(normalize_text("قال لافروف إنّ إدلب"))
    b = content_hash(normalize_text("قال لافروف ان ادلب"))
    assert a == b
    assert a != content_hash(normalize_text("قال لافروف ان حلب"))


def test_url_key_is_lossy_and_stable():
    a = url_key("https://www.Example.com:443/news/story/?utm_source=rss&b=2&a=1#comments")
    b = url_key("http://m.example.com/news/story?a=1&b=2&fbclid=xyz")
    assert a == b == "example.com/news/story?a=1&b=2"
    assert url_key("http://127.0.0.1:8765/x.html") == "127.0.0.1:8765/x.html"


def test_clean_url_keeps_it_fetchable():
    assert clean_url("https://Example.com/a?utm_medium=feed&id=3#top") == "https://example.com/a?id=3"
    assert source_domain("https://www.example.com/a") == "example.com"
