"""Text cleaning: small steps, each one function ``str -> str``, composed in a :class:`Pipeline` that reports
how many documents and characters every step changed.

IMDB reviews carry HTML line breaks (``<br /><br />``), entities (``&amp;``), and the odd control character;
web text adds URLs, e-mail addresses and numbers one may want to mask. Each step is small enough to test on its
own, and the pipeline's report says what each one did to a corpus, so a step that destroys content shows up as
a large count where a small one was expected.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

__all__ = [
    "strip_html",
    "repair_cp1252",
    "normalize_unicode",
    "remove_control_chars",
    "normalize_whitespace",
    "mask_urls",
    "mask_emails",
    "mask_numbers",
    "length_filter",
    "Step",
    "Pipeline",
    "CleanResult",
    "default_pipeline",
]

# <br>, <br/>, <br /> become a line break (IMDB's paragraph marks); any other tag goes. A tag must start with a
# letter, '/' or '!' so that "a < b > c" and "<3" stay text.
_BR = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
_TAG = re.compile(r"<\s*[/!]?[A-Za-z][^<>]{0,200}>")
_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"']+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
# a number: digits with optional thousands separators and decimals (1,000.5; 3.14; 1990); not inside a word
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")
_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newlines
_NEWLINES = re.compile(r"\s*\n\s*")


def strip_html(text: str) -> str:
    """Turn ``<br />`` into a newline, drop other tags, and decode entities (``&amp;`` -> ``&``, ``&#233;`` -> é).

    Entities are decoded after the tags are removed, so an escaped ``&lt;b&gt;`` stays visible text ``<b>``.
    """
    text = _BR.sub("\n", text)
    text = _TAG.sub(" ", text)
    return html.unescape(text)


_C1 = re.compile("[\x80-\x9f]")


def _cp1252(match: re.Match) -> str:
    return bytes([ord(match.group())]).decode("cp1252", errors="ignore")  # 5 undefined bytes -> ""


def repair_cp1252(text: str) -> str:
    """Map C1 control characters (U+0080-U+009F) to the Windows-1252 punctuation they were meant to be.

    Text saved as Windows-1252 and read as Latin-1 turns dashes, curly quotes and ellipses into C1 controls:
    IMDB has thousands ("Isildur\x85" is "Isildur…", "\x96 Mount Doom" is "– Mount Doom"). Removing them as
    control characters would delete that punctuation, so this step runs before :func:`remove_control_chars`.
    """
    return _C1.sub(_cp1252, text) if _C1.search(text) else text


def normalize_unicode(text: str, form: str = "NFKC") -> str:
    """Unicode normalisation; NFKC folds compatibility forms (ﬁ -> fi, full-width Ａ -> A, ² -> 2, … -> ...)."""
    if form not in ("NFC", "NFKC", "NFD", "NFKD"):
        raise ValueError(f"form must be one of NFC, NFKC, NFD, NFKD, got {form!r}")
    return unicodedata.normalize(form, text)


def remove_control_chars(text: str) -> str:
    """Drop control and format characters (categories Cc, Cf: NUL, BEL, zero-width space, BOM, ...).

    Tabs and newlines are kept (they are whitespace that :func:`normalize_whitespace` handles); a zero-width
    joiner is dropped too, which changes some emoji sequences but no letters of the languages in this course.
    """
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(ch for ch in text if ch in "\t\n" or unicodedata.category(ch) not in ("Cc", "Cf"))


def normalize_whitespace(text: str, keep_newlines: bool = False) -> str:
    """Collapse runs of whitespace to one space and strip the ends; with ``keep_newlines``, runs that contain a
    newline become one newline (paragraphs survive)."""
    if keep_newlines:
        return _NEWLINES.sub("\n", _SPACES.sub(" ", text)).strip()
    return " ".join(text.split())


def mask_urls(text: str, token: str = "<url>") -> str:
    """Replace URLs (``http://``, ``https://``, ``ftp://``, ``www.``) by ``token``."""
    return _URL.sub(token, text)


def mask_emails(text: str, token: str = "<email>") -> str:
    """Replace e-mail addresses by ``token``."""
    return _EMAIL.sub(token, text)


def mask_numbers(text: str, token: str = "<num>") -> str:
    """Replace numbers that stand alone (``1990``, ``7.5``, ``1,000``) by ``token``; ``7/10`` -> ``<num>/<num>``,
    while digits inside words (``mp3``, ``2nd``) stay."""
    return _NUMBER.sub(token, text)


def length_filter(min_chars: int = 1, max_chars: int | None = None) -> Callable[[str], bool]:
    """A predicate keeping texts with ``min_chars <= len(text) <= max_chars`` (use it as a filter step)."""
    if not isinstance(min_chars, int) or min_chars < 0:
        raise ValueError(f"min_chars must be an int >= 0, got {min_chars!r}")
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < min_chars):
        raise ValueError(f"max_chars must be None or an int >= min_chars ({min_chars}), got {max_chars!r}")

    def keep(text: str) -> bool:
        return len(text) >= min_chars and (max_chars is None or len(text) <= max_chars)

    keep.__name__ = f"length_filter({min_chars}, {max_chars})"
    return keep


@dataclass(frozen=True)
class Step:
    """One pipeline step: a ``map`` (``str -> str``) or a ``filter`` (``str -> bool``, True keeps the text)."""

    name: str
    fn: Callable
    kind: str = "map"

    def __post_init__(self):
        if self.kind not in ("map", "filter"):
            raise ValueError(f"Step kind must be 'map' or 'filter', got {self.kind!r}")
        if not callable(self.fn):
            raise TypeError(f"Step {self.name!r}: fn must be callable, got {type(self.fn).__name__}")


@dataclass
class CleanResult:
    """What :meth:`Pipeline.run` returns.

    ``texts``: the cleaned texts that were kept; ``kept``: their indices in the input (to keep labels aligned:
    ``labels[result.kept]``); ``report``: one dict per step with ``step``, ``kind``, ``docs_changed`` (texts a map
    changed, or texts a filter dropped), ``chars_removed`` (net characters removed; negative when a step adds,
    as masking can) and ``docs_in``.
    """

    texts: list[str]
    kept: list[int]
    report: list[dict]

    def report_frame(self):
        """The report as a pandas DataFrame (one row per step)."""
        import pandas as pd

        return pd.DataFrame(self.report)


class Pipeline:
    """Steps applied in order to every text; ``Pipeline([...]).run(texts)`` returns a :class:`CleanResult`.

    Steps may be :class:`Step` objects or plain functions (taken as maps, named after the function).
    """

    def __init__(self, steps: Sequence[Step | Callable]):
        self.steps = [s if isinstance(s, Step) else Step(getattr(s, "__name__", repr(s)), s) for s in steps]
        if not self.steps:
            raise ValueError("a Pipeline needs at least one step")

    def __call__(self, text: str) -> str | None:
        """Clean one text; None when a filter drops it."""
        for step in self.steps:
            if step.kind == "map":
                text = step.fn(text)
            elif not step.fn(text):
                return None
        return text

    def run(self, texts: Iterable[str]) -> CleanResult:
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, not str; convert first (e.g. "
                                "df.text.astype(str)) or drop missing values")
        kept = list(range(len(texts)))
        report = []
        for step in self.steps:
            n_in = len(texts)
            before = sum(map(len, texts))
            if step.kind == "map":
                out = [step.fn(t) for t in texts]
                changed = sum(a != b for a, b in zip(texts, out))
                texts = out
            else:
                flags = [bool(step.fn(t)) for t in texts]
                changed = flags.count(False)
                texts = [t for t, f in zip(texts, flags) if f]
                kept = [k for k, f in zip(kept, flags) if f]
            report.append({"step": step.name, "kind": step.kind, "docs_in": n_in, "docs_changed": changed,
                           "chars_removed": before - sum(map(len, texts))})
        return CleanResult(texts, kept, report)


def default_pipeline(mask: bool = False, min_chars: int = 1, max_chars: int | None = None,
                     keep_newlines: bool = False) -> Pipeline:
    """HTML -> Windows-1252 repair -> NFKC -> control characters -> [masks] -> whitespace -> length filter.

    Masking (URLs before e-mails before numbers, so that digits inside a URL go with the URL) is off by default:
    a sentiment model can use "10/10".
    """
    steps: list[Step] = [
        Step("strip_html", strip_html),
        Step("repair_cp1252", repair_cp1252),
        Step("normalize_unicode", normalize_unicode),
        Step("remove_control_chars", remove_control_chars),
    ]
    if mask:
        steps += [Step("mask_urls", mask_urls), Step("mask_emails", mask_emails),
                  Step("mask_numbers", mask_numbers)]
    steps.append(Step("normalize_whitespace", lambda t: normalize_whitespace(t, keep_newlines)))
    steps.append(Step("length_filter", length_filter(min_chars, max_chars), kind="filter"))
    return Pipeline(steps)
