"""WordNet 3.0 read straight from its database files (``index.<pos>``, ``data.<pos>``, ``<pos>.exc``; format:
wndb(5WN)), for EDA's synonym look-ups without NLTK's per-synset objects.

NLTK's ``wordnet.synsets(word)`` builds a ``Synset`` and its ``Lemma`` objects for every synset it returns and
parses its pointer list, glosses and verb frames; EDA only needs the lemma names. This reader answers the same
question (:meth:`WordNetDB.lemma_names` gives NLTK's ``[l.name() for s in wn.synsets(word) for l in s.lemmas()]``,
same names, same order) from:

- each ``index.<pos>`` file as a list of its lines; WordNet sorts them by lemma (checked on loading), so a lemma's
  line is found by binary search (``bisect``, in C), and split only when it is looked up;
- the ``data.<pos>`` files memory-mapped, each synset's line read at its byte offset (the offsets the index gives);
- WordNet's morphology as NLTK's ``_morphy`` applies it, in NLTK's order: parts of speech noun, verb, adjective,
  adverb; for each, the exception list if the form is in it, else one pass of the detachment rules; the form itself
  first, then the candidates, those in that part of speech's index, without repeats. Adjective satellites are
  found through ``index.adj`` (NLTK's ``synsets()`` without a part of speech never asks for ``s`` apart).

Loading (four index files split into lines, four exception lists, four memory maps) takes a few tens of
milliseconds; nothing is parsed for words that are never looked up.
"""

from __future__ import annotations

import mmap
import re
from bisect import bisect_left
from pathlib import Path

__all__ = ["WordNetDB"]

# NLTK's order in synsets(word) with pos=None (nltk.corpus.reader.wordnet.POS_LIST), and its file names
POS_ORDER = ("n", "v", "a", "r")
_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# NLTK's MORPHOLOGICAL_SUBSTITUTIONS (WordNet's morph.c detachment rules), in its order
SUBSTITUTIONS = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
# a lemma's syntactic marker, "(a)", "(p)" or "(ip)", dropped as NLTK drops it
_MARKER = re.compile(r"(.*?)(\([^()]*\))?$")
_VERSION = re.compile(rb"Word[nN]et (\d+\+?|\d+\.\d+) Copyright")


class WordNetDB:
    """WordNet's database files under ``root`` (e.g. ``nltk_data/corpora/wordnet``), read without NLTK."""

    def __init__(self, root) -> None:
        self.root = Path(root)
        missing = [f"{kind}.{name}" for name in _FILES.values() for kind in ("index", "data")
                   if not (self.root / f"{kind}.{name}").is_file()]
        if missing:
            raise FileNotFoundError(f"{self.root} is not a WordNet database folder (missing {missing}): point "
                                    "$LLMSCRATCH_DATA at the course's data folder")
        self._lines: dict[str, list[str]] = {}  # pos -> index.<pos>'s lemma lines, sorted
        self._exceptions: dict[str, dict[str, list[str]]] = {}
        self._data: dict[str, mmap.mmap] = {}
        self._names: dict[tuple[str, int], list[str]] = {}  # (pos, offset) -> the synset's lemma names
        for pos, name in _FILES.items():
            lines = (self.root / f"index.{name}").read_text(encoding="utf-8").split("\n")
            if lines[-1] == "":
                lines.pop()
            # the licence header: the first lines, which start with a space
            start = next((i for i, line in enumerate(lines) if not line.startswith(" ")), len(lines))
            lines = lines[start:]
            # sorted by lemma (a space sorts before any character of a lemma, so line order is lemma order), as
            # binary search needs
            if not all(map(str.__le__, lines, lines[1:])):
                raise ValueError(f"{self.root / f'index.{name}'} is not sorted by lemma, as WordNet's index "
                                 "files are: reinstall WordNet 3.0")
            self._lines[pos] = lines
            exc = self.root / f"{name}.exc"
            self._exceptions[pos] = ({(t := line.split())[0]: t[1:] for line in
                                      exc.read_text(encoding="utf-8").splitlines() if line.strip()}
                                     if exc.is_file() else {})
            with open(self.root / f"data.{name}", "rb") as fh:
                self._data[pos] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    def version(self) -> str | None:
        """The version in ``data.adj``'s licence header (as NLTK's ``get_version`` reads it), e.g. ``"3.0"``."""
        match = _VERSION.search(self._data["a"][:4096])
        return match.group(1).decode() if match else None

    def index_line(self, lemma: str, pos: str) -> str | None:
        """``lemma``'s line of ``index.<pos>`` (lemma, pos, counts, pointer symbols, synset offsets), or None."""
        if lemma.split() != [lemma]:
            # no lemma holds whitespace: without this, "good a" would find the line "good a ..." of "good"
            return None
        lines = self._lines[pos]
        key = lemma + " "
        i = bisect_left(lines, key)
        if i == len(lines) or not lines[i].startswith(key):
            return None
        while i + 1 < len(lines) and lines[i + 1].startswith(key):  # a lemma listed twice: NLTK keeps the last
            i += 1
        return lines[i]

    def morphy(self, form: str, pos: str) -> list[str]:
        """NLTK's ``_morphy(form, pos)``: the base forms of ``form`` in part of speech ``pos`` ("n", "v", "a",
        "r") that WordNet lists, the form itself first."""
        exceptions = self._exceptions[pos]
        if form in exceptions:
            forms = exceptions[form]
        else:
            forms = [form[:-len(old)] + new for old, new in SUBSTITUTIONS[pos] if form.endswith(old)]
        return [f for f in dict.fromkeys([form, *forms]) if self.index_line(f, pos) is not None]

    def offsets(self, lemma: str, pos: str) -> list[int]:
        """The byte offsets in ``data.<pos>`` of ``lemma``'s synsets, in WordNet's order (most frequent first)."""
        line = self.index_line(lemma, pos)
        if line is None:
            return []
        fields = line.split()  # lemma, pos, synset_cnt, p_cnt, pointers..., sense_cnt, tagsense_cnt, offsets
        return [int(o) for o in fields[-int(fields[2]):]]

    def synset_lemma_names(self, pos: str, offset: int) -> list[str]:
        """The lemma names of the synset at ``offset`` of ``data.<pos>``, as NLTK's ``Lemma.name()`` gives them
        (underscores for spaces, syntactic markers such as "(a)" dropped)."""
        key = (pos, offset)
        names = self._names.get(key)
        if names is None:
            data = self._data[pos]
            end = data.find(b"\n", offset)
            line = data[offset:end if end >= 0 else len(data)].decode("utf-8")
            # offset, lex_filenum, ss_type, w_cnt (2 hex digits), then w_cnt pairs of word and lex_id, ...
            head = line.split(" ", 4)
            if len(head) < 5 or not head[0].isdigit() or int(head[0]) != offset:
                raise ValueError(f"data.{_FILES[pos]} has no synset at byte {offset} (found {line[:40]!r}): "
                                 "the WordNet files do not match each other; reinstall WordNet 3.0")
            n = int(head[3], 16)
            names = [_MARKER.match(w).group(1) if w.endswith(")") else w
                     for w in head[4].split(" ", 2 * n)[:2 * n:2]]
            self._names[key] = names
        return names

    def lemma_names(self, word: str) -> list[str]:
        """NLTK's ``[l.name() for s in wn.synsets(word) for l in s.lemmas()]`` (lowercased ``word``, every part
        of speech, morphology applied), with repeats, in the same order."""
        word = word.lower()
        return [name for pos in POS_ORDER for form in self.morphy(word, pos) for off in self.offsets(form, pos)
                for name in self.synset_lemma_names(pos, off)]
