"""The chapter standard of DESIGN.md, checked on every book notebook (picked up by listing book/).

- code lines are at most 100 characters (the setup cell is exempt: its text is fixed by
  ``llmscratch.notebooks.setup_cell_source()``);
- the setup cell is removed from the HTML page (tag ``remove-cell``) and the parameters cell hidden or removed
  (``hide-cell`` or ``remove-cell``); both stay in the .ipynb, where Colab and papermill need them;
- a chapter notebook (``book/ch*.ipynb``) has a numbered title (``# Chapter 3`` or, when a chapter has several
  notebooks, ``# Chapter 3a`` / ``# Chapter 3b`` in the order of ``_toc.yml``) and the standard's parts: the
  exact headings ``## Learning objectives`` (3-6 bullets), ``## Check your understanding`` (3-6 questions, each
  answered in a collapsed ``:class: dropdown`` admonition), ``## Try it``, ``## Summary``, ``## What you built``
  and ``## Further reading`` (with a ``{cite}``), and at least one diagram from ``book/figures/`` with alt text;
- every SVG under ``book/figures/`` is well-formed XML, loads nothing from the network, and is used by a notebook.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO, notebooks
from test_book import toc_files
from llmscratch.notebooks import PARAMETERS_TAG, SETUP_TAG, read_notebook, setup_cell_source

BOOK = REPO / "book"
FIGURES = BOOK / "figures"
MAX_LINE = 100
REQUIRED_HEADINGS = ("Learning objectives", "Check your understanding", "Try it", "Summary", "What you built",
                     "Further reading")

BOOK_NOTEBOOKS = notebooks("book")
CHAPTERS = [p for p in BOOK_NOTEBOOKS if p.parent == BOOK and p.name.startswith("ch")]
SVGS = sorted(FIGURES.rglob("*.svg")) if FIGURES.is_dir() else []


def _id(p):
    return str(p.relative_to(REPO))


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _markdown(path) -> str:
    return "\n\n".join(_source(c) for c in read_notebook(path).cells if c.cell_type == "markdown")


def sections(markdown: str) -> dict[str, str]:
    """Level-2 heading -> the text up to the next level-1 or level-2 heading (headings in code fences ignored)."""
    found, current, in_fence = {}, None, False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        heading = None if in_fence else re.match(r"^(#{1,2}) (.+?)\s*$", line)
        if heading:
            current = heading.group(2) if heading.group(1) == "##" else None
            if current is not None:
                found.setdefault(current, "")
            continue
        if current is not None:
            found[current] += line + "\n"
    return found


def admonitions(text: str) -> tuple[list[str], str]:
    """The bodies of ``:::{...}`` colon-fence blocks in ``text``, and the text outside them."""
    blocks, outside, body, depth = [], [], [], 0
    for line in text.splitlines():
        stripped = line.strip()
        if re.match(r"^:::+\{", stripped):
            depth += 1
            body.append(line)
            continue
        if depth and re.match(r"^:::+$", stripped):
            depth -= 1
            if depth == 0:
                blocks.append("\n".join(body))
                body = []
            else:
                body.append(line)
            continue
        (body if depth else outside).append(line)
    return blocks, "\n".join(outside)


FIGURE_DIRECTIVE = re.compile(r"^(`{3,}|:{3,})\{figure\}\s+(\S+)\s*\n(.*?)^\1\s*$", re.M | re.S)
IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def figures(markdown: str) -> list[tuple[str, str]]:
    """(path as written, alt text) for every ```{figure}``` directive and ``![alt](path)`` image in markdown."""
    found = []
    for m in FIGURE_DIRECTIVE.finditer(markdown):
        alt = re.search(r"^:alt:\s*(.+)$", m.group(3), re.M)
        found.append((m.group(2), alt.group(1).strip() if alt else ""))
    found += [(m.group(2), m.group(1).strip()) for m in IMAGE_LINK.finditer(markdown)]
    return found


# --- the checks themselves, tested on small made-up inputs (a check that cannot fail is a defect) -----------


def test_the_parsers_find_what_they_should():
    md = ("# Chapter 9 — X\n\n## Learning objectives\n- a\n- b\n\n```python\n## not a heading\n```\n"
          "## Check your understanding\n1. Why?\n:::{admonition} Answer\n:class: dropdown\nBecause.\n:::\n"
          "```{figure} figures/ch09_x.svg\n:alt: a box\n:width: 80%\nCaption.\n```\n![](figures/y.svg)\n")
    found = sections(md)
    assert list(found) == ["Learning objectives", "Check your understanding"]
    assert "## not a heading" in found["Learning objectives"]
    blocks, outside = admonitions(found["Check your understanding"])
    assert len(blocks) == 1 and ":class: dropdown" in blocks[0] and "Why?" in outside and "Because" not in outside
    assert figures(md) == [("figures/ch09_x.svg", "a box"), ("figures/y.svg", "")]


# --- every book notebook ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=_id)
def test_code_lines_fit_in_100_characters(path):
    long = []
    for i, cell in enumerate(read_notebook(path).cells):
        if cell.cell_type != "code" or _source(cell) == setup_cell_source():
            continue
        long += [f"cell {i} ({cell.get('id')}), line {n}: {len(line)} characters"
                 for n, line in enumerate(_source(cell).splitlines(), start=1) if len(line) > MAX_LINE]
    assert not long, f"{_id(path)} has code lines over {MAX_LINE} characters (wrap them):\n  " + "\n  ".join(long)


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=_id)
def test_setup_and_parameters_cells_are_hidden_on_the_page(path):
    code = [c for c in read_notebook(path).cells if c.cell_type == "code"]
    tags = {name: c.get("metadata", {}).get("tags", []) for c in code
            for name in (SETUP_TAG, PARAMETERS_TAG) if name in c.get("metadata", {}).get("tags", [])}
    assert SETUP_TAG in tags and PARAMETERS_TAG in tags, f"{_id(path)}: no setup/parameters cell"
    assert "remove-cell" in tags[SETUP_TAG], (
        f"{_id(path)}: the setup cell needs the tag 'remove-cell' (kept in the .ipynb, removed from the page)")
    assert {"hide-cell", "remove-cell"} & set(tags[PARAMETERS_TAG]), (
        f"{_id(path)}: the parameters cell needs the tag 'hide-cell' (or 'remove-cell') to be hidden on the page")


# --- chapter notebooks: the parts of the standard -----------------------------------------------------------


@pytest.mark.parametrize("path", CHAPTERS, ids=_id)
def test_chapter_title_is_numbered(path):
    number = int(re.match(r"ch(\d+)_", path.name).group(1))
    siblings = [f for f in toc_files() if re.match(rf"book/ch{number:02d}_", f)]
    name = f"book/{path.stem}"
    assert name in siblings, f"{_id(path)} is not listed in _toc.yml"
    label = f"{number}{'abcdefgh'[siblings.index(name)]}" if len(siblings) > 1 else f"{number}"
    title = next((line for line in _markdown(path).splitlines() if line.startswith("# ")), "")
    assert title.startswith(f"# Chapter {label} — "), (
        f"{_id(path)}: the title must start with '# Chapter {label} — ' (chapters with several notebooks are "
        f"numbered a, b, ... in _toc.yml order); found {title!r}")


@pytest.mark.parametrize("path", CHAPTERS, ids=_id)
def test_chapter_has_the_standard_parts(path):
    found = sections(_markdown(path))
    missing = [h for h in REQUIRED_HEADINGS if h not in found]
    assert not missing, f"{_id(path)} lacks the headings: " + ", ".join(f"'## {h}'" for h in missing)

    bullets = re.findall(r"^\s*[-*] \S", found["Learning objectives"], re.M)
    assert 3 <= len(bullets) <= 6, f"{_id(path)}: '## Learning objectives' needs 3-6 bullets, has {len(bullets)}"

    blocks, outside = admonitions(found["Check your understanding"])
    answers = [b for b in blocks if re.search(r"^\s*:class:\s*dropdown\s*$", b, re.M)]
    questions = outside.count("?")
    assert 3 <= len(answers) <= 6, (
        f"{_id(path)}: '## Check your understanding' needs 3-6 answers in collapsed blocks "
        f"(':::{{admonition}} Answer' with ':class: dropdown'), has {len(answers)}")
    assert questions >= len(answers), (
        f"{_id(path)}: '## Check your understanding' has {len(answers)} answers but {questions} questions "
        "(a question ends with '?', outside its answer block)")

    assert found["Try it"].strip(), f"{_id(path)}: '## Try it' is empty"
    assert found["What you built"].strip(), f"{_id(path)}: '## What you built' is empty"
    assert "{cite}" in found["Further reading"], f"{_id(path)}: '## Further reading' cites nothing ({{cite}})"


@pytest.mark.parametrize("path", CHAPTERS, ids=_id)
def test_chapter_has_a_diagram_with_alt_text(path):
    used = [(p, alt) for p, alt in figures(_markdown(path)) if p.startswith("figures/")]
    assert used, f"{_id(path)} shows no diagram from book/figures/ (```{{figure}} figures/chNN_x.svg```)"
    missing = [p for p, _ in used if not (BOOK / p).is_file()]
    assert not missing, f"{_id(path)} refers to figures that do not exist: {missing}"
    no_alt = [p for p, alt in used if not alt]
    assert not no_alt, f"{_id(path)}: figures without alt text (':alt:' or ![alt](...)): {no_alt}"
    assert any(p.endswith(".svg") for p, _ in used), f"{_id(path)}: no SVG diagram among {used}"


# --- the figures --------------------------------------------------------------------------------------------


def test_every_figure_is_used():
    used = {str((BOOK / p).resolve()) for nb in BOOK_NOTEBOOKS for p, _ in figures(_markdown(nb))}
    used |= {str((BOOK / p).resolve()) for md in BOOK.glob("*.md") for p, _ in figures(md.read_text())}
    unused = [_id(p) for p in SVGS if str(p.resolve()) not in used]
    assert not unused, f"figures no page shows (use them or delete them): {unused}"


def svg_problems(path) -> list[str]:
    """What is wrong with an SVG file: not well-formed, not an <svg>, or refers to the network."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return [f"not well-formed XML: {err}"]
    if root.tag not in ("svg", "{http://www.w3.org/2000/svg}svg"):
        return [f"the root element is {root.tag}, not <svg>"]
    # Namespace declarations (xmlns=...) are consumed by the parser; what is left must not name the network.
    remote = [f"<{el.tag.split('}')[-1]} {k}={v!r}>" for el in root.iter() for k, v in el.attrib.items()
              if re.search(r"https?:|//", v)]
    remote += [f"text of <{el.tag.split('}')[-1]}>" for el in root.iter() if el.text and "http" in el.text]
    return [f"refers to the network (fonts, images, styles): {r}" for r in remote]


def test_svg_problems_are_found(tmp_path):
    ok = tmp_path / "ok.svg"
    ok.write_text('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect width="5" height="5"/></svg>')
    assert svg_problems(ok) == []
    bad = {"broken": '<svg xmlns="http://www.w3.org/2000/svg"><rect></svg>',
           "image": '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
                    '<image xlink:href="https://example.org/a.png"/></svg>',
           "font": '<svg xmlns="http://www.w3.org/2000/svg"><style>@import url(http://f.org/x.css);</style></svg>',
           "html": "<html/>"}
    for name, text in bad.items():
        f = tmp_path / f"{name}.svg"
        f.write_text(text)
        assert svg_problems(f), f"{name}: not flagged"


@pytest.mark.parametrize("path", SVGS, ids=_id)
def test_svg_is_well_formed_and_offline(path):
    problems = svg_problems(path)
    assert not problems, f"{_id(path)}: " + "; ".join(problems)


def test_template_has_the_standard_parts():
    """templates/chapter.ipynb is where a new chapter starts: it carries the headings and the hiding tags."""
    template = REPO / "templates" / "chapter.ipynb"
    found = sections(_markdown(template))
    missing = [h for h in REQUIRED_HEADINGS if h not in found]
    assert not missing, f"templates/chapter.ipynb lacks the headings: {missing}"
    test_setup_and_parameters_cells_are_hidden_on_the_page(template)
