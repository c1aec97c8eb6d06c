"""llmscratch.data.cleaning: each step on its own, against an independent HTML parser on IMDB, and the pipeline's
report."""

from __future__ import annotations

import unicodedata
from html.parser import HTMLParser

import pytest

from llmscratch.data.cleaning import (Pipeline, Step, default_pipeline, length_filter, mask_emails, mask_numbers,
                                      mask_urls, normalize_unicode, repair_cp1252, normalize_whitespace, remove_control_chars,
                                      strip_html)


class _TextOf(HTMLParser):
    """The reference: the standard library's HTML parser, text data only, <br> as a newline."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []

    def handle_starttag(self, tag, attrs):
        self.parts.append("\n" if tag == "br" else " ")

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        self.parts.append(" ")

    def handle_data(self, data):
        self.parts.append(data)


def _reference_text(s: str) -> str:
    p = _TextOf()
    p.feed(s)
    p.close()
    return "".join(p.parts)


def test_strip_html_on_imdb_matches_the_standard_library_parser(data_dir):
    from llmscratch.data import load_imdb

    texts = [t for t in load_imdb("train", limit=2000).text if "<" in t or "&" in t][:300]
    assert len(texts) > 100, "IMDB reviews carry <br /> tags"
    for t in texts:
        assert normalize_whitespace(strip_html(t)) == normalize_whitespace(_reference_text(t)), t[:200]
        assert "<br" not in strip_html(t)


def test_strip_html_keeps_text_that_only_looks_like_markup():
    assert strip_html("I <3 it, 2 < 3 > 1") == "I <3 it, 2 < 3 > 1"
    assert strip_html("a&amp;b &lt;b&gt; caf&#233;") == "a&b <b> café"
    assert strip_html("one<br /><br />two") == "one\n\ntwo"
    assert strip_html("<i>Brazil</i>") == " Brazil "


def test_unicode_control_and_whitespace():
    assert normalize_unicode("ﬁne Ａ² …") == "fine A2 ..."
    for s in ["ﬁne Ａ² …", "e\u0301", "\u2163"]:
        assert normalize_unicode(s) == unicodedata.normalize("NFKC", s)
    with pytest.raises(ValueError, match="NFKC"):
        normalize_unicode("x", "NFX")
    assert remove_control_chars("a\x00b\u200bc\ufeff\td\ne\x07") == "abc\td\ne"
    assert remove_control_chars("plain") == "plain"
    assert normalize_whitespace("  a \t b\n\n c  ") == "a b c"
    assert normalize_whitespace(" a  \n \n b ", keep_newlines=True) == "a\nb"


def test_masks():
    assert mask_urls("see https://x.org/a?b=1 and www.imdb.com now") == "see <url> and <url> now"
    assert mask_emails("mail me: a.b+c@mail.example.com.") == "mail me: <email>."
    assert mask_numbers("7/10, 1,000 votes in 1990; 3.5 stars; mp3 2nd") == \
        "<num>/<num>, <num> votes in <num>; <num> stars; mp3 2nd"


def test_length_filter_and_its_errors():
    keep = length_filter(3, 5)
    assert [keep(s) for s in ["ab", "abc", "abcde", "abcdef"]] == [False, True, True, False]
    with pytest.raises(ValueError, match="max_chars"):
        length_filter(5, 2)
    with pytest.raises(ValueError, match="min_chars"):
        length_filter(-1)


def test_pipeline_reports_what_each_step_changed():
    texts = ["Good<br />film", "fine", "  spaced   out ", "x", "caf&eacute;"]
    pipe = Pipeline([Step("html", strip_html), normalize_whitespace,
                     Step("long enough", length_filter(2), kind="filter")])
    res = pipe.run(texts)
    assert res.texts == ["Good film", "fine", "spaced out", "café"]
    assert res.kept == [0, 1, 2, 4]
    rep = {r["step"]: r for r in res.report}
    assert rep["html"]["docs_changed"] == 2  # the <br /> and the entity
    assert rep["html"]["chars_removed"] == len("<br />") - 1 + len("&eacute;") - 1
    assert rep["normalize_whitespace"]["docs_changed"] == 2
    assert rep["long enough"] == {"step": "long enough", "kind": "filter", "docs_in": 5, "docs_changed": 1,
                                  "chars_removed": 1}
    # the report's character counts add up to the corpus's change
    assert sum(r["chars_removed"] for r in res.report) == sum(map(len, texts)) - sum(map(len, res.texts))
    assert pipe("Good<br />film") == "Good film" and pipe("x") is None
    assert list(res.report_frame().columns) == ["step", "kind", "docs_in", "docs_changed", "chars_removed"]


def test_pipeline_errors_name_the_fix():
    with pytest.raises(TypeError, match="astype"):
        default_pipeline().run(["ok", None])
    with pytest.raises(ValueError, match="at least one step"):
        Pipeline([])
    with pytest.raises(ValueError, match="map' or 'filter"):
        Step("x", str.strip, kind="reduce")


def test_default_pipeline_with_masks():
    res = default_pipeline(mask=True, min_chars=5).run(
        ["Rated 9/10 at www.x.com<br />by me@x.org", "\ufeffok", "Ｆｕｌｌ width"])
    assert res.texts == ["Rated <num>/<num> at <url> by <email>", "Full width"]
    assert res.kept == [0, 2]
    assert [r["step"] for r in res.report] == ["strip_html", "repair_cp1252", "normalize_unicode", "remove_control_chars",
                                               "mask_urls", "mask_emails", "mask_numbers",
                                               "normalize_whitespace", "length_filter"]


def test_windows_1252_punctuation_is_repaired_not_deleted():
    # IMDB's own examples: an ellipsis, an en dash and em dashes stored as C1 control characters
    assert repair_cp1252("Isildur\x85. but") == "Isildur\u2026. but"
    assert repair_cp1252("\"unmade\" \x96 Mount Doom") == "\"unmade\" \u2013 Mount Doom"
    assert repair_cp1252("and\x97best of all\x97the") == "and\u2014best of all\u2014the"
    assert repair_cp1252("\x91order\x92") == "\u2018order\u2019"
    assert repair_cp1252("a\x81b") == "ab"  # 0x81 is undefined in Windows-1252
    for b in range(0x80, 0xA0):  # every C1 character maps as Python's codec says
        try:
            expected = bytes([b]).decode("cp1252")
        except UnicodeDecodeError:
            expected = ""
        assert repair_cp1252(chr(b)) == expected
    assert default_pipeline()("one\x85 two") == "one... two"  # NFKC then spells the ellipsis out
