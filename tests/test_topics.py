from pathlib import Path

import pytest
from newsmon.config import CONFIG_DIR
from newsmon.errors import ConfigError
from newsmon.topics import load_taxonomy, partition_name


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy(CONFIG_DIR / "topics.yml")


def slugs(tax, title, body=""):
    return [m.slug for m in tax.classify(title, body)]


@pytest.mark.parametrize("word", ["سوريا", "وسوريا", "بسوريا", "لسوريا", "فسوريا"])
def test_arabic_proclitics_match(tax, word):
    assert "syria" in slugs(tax, f"تقرير عن {word} اليوم")


@pytest.mark.parametrize("word", ["إدلب", "ادلب", "وإدلب", "بإدلب", "لإدلب"])
def test_idlib_variants_match_and_imply_syria(tax, word):
    assert slugs(tax, f"قصف في {word}") == ["idlib", "syria"]


def test_no_match_inside_longer_word(tax):
    assert "syria" not in slugs(tax, "معرض الفن السورياليه في باريس", "السورياليه مدرسة فنية")


def test_english_word_boundaries_plural_possessive(tax):
    assert "syria" in slugs(tax, "Syria's economy")
    assert "syria" in slugs(tax, "Syrians return home")
    assert "syria" not in slugs(tax, "Syriac manuscripts found", "A Syriac text")
    assert "russia" in slugs(tax, "Kremlin says", "")


def test_title_counts_more_than_body(tax):
    assert slugs(tax, "Weather today", "Rain expected. Syria mentioned once.") == []
    assert "syria" in slugs(tax, "Syria weather", "Rain expected.")
    assert "syria" in slugs(tax, "Weather", "Syria rain. Damascus floods.")


def test_evidence_is_recorded(tax):
    [idlib, syria] = tax.classify("Shelling in Idlib", "Idlib province, north-west Syria")
    assert idlib.slug == "idlib" and "idlib" in idlib.terms
    assert syria.terms[0] == "<idlib>"


def test_unrelated_article_matches_nothing(tax):
    assert slugs(tax, "منتخب مصر يفوز", "فاز المنتخب المصري في مباراة كرة القدم") == []


def test_invalid_files_report_line_and_topic(tmp_path: Path):
    f = tmp_path / "t.yml"
    f.write_text("topics:\n  - slug: Bad-Slug\n    terms: {en: [x]}\n")
    with pytest.raises(ConfigError, match=r"t\.yml, line 2 \(topic 'Bad-Slug'\): 'slug' must match"):
        load_taxonomy(f)
    f.write_text("topics:\n  - slug: a\n    terms: {en: [x]}\n  - slug: b\n    parent: zz\n    terms: {en: [y]}\n")
    with pytest.raises(ConfigError, match=r"line 5 \(topic 'b'\): unknown parent 'zz'"):
        load_taxonomy(f)
    f.write_text("topics:\n  - slug: a\n    terms: {en: []}\n    colour: red\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\]"):
        load_taxonomy(f)


def test_partition_names_are_validated():
    assert partition_name("idlib") == "articles_idlib"
    for bad in ("unclassified", "x; drop table", "Idlib", "1x"):
        with pytest.raises(ValueError):
            partition_name(bad)


def test_boolean_rules_all_any_none(tmp_path: Path):
    f = tmp_path / "t.yml"
    f.write_text(
        """topics:
  - slug: ceasefire
    label: Ceasefire in Idlib
    min_score: 1
    terms: {en: [ceasefire, truce], ar: [هدنة, وقف إطلاق النار]}
    rules:
      all: [[Idlib, إدلب]]
      any: [[Russia, Turkey, روسيا, تركيا], [UN, الأمم المتحدة]]
      none: [[football, كرة القدم]]
""",
        encoding="utf-8",
    )
    tax = load_taxonomy(f)
    assert slugs(tax, "Truce in Idlib agreed by Russia and Turkey") == ["ceasefire"]
    assert slugs(tax, "هدنة في إدلب برعاية روسيا") == ["ceasefire"]
    assert slugs(tax, "Truce in Idlib holds") == []  # no 'any' group matched
    assert slugs(tax, "Truce in Aleppo agreed by Russia") == []  # 'all' group missing
    assert slugs(tax, "Idlib football truce with Turkey") == []  # 'none' group matched
    f.write_text("topics:\n  - slug: x\n    terms: {en: [a]}\n    rules: {some: [[b]]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="all/any/none"):
        load_taxonomy(f)
