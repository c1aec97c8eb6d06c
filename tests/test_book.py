"""The Jupyter Book: configuration, committed outputs, a warning-free offline build, and a real browser render."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, notebooks
from llmscratch.notebooks import REPO_URL, read_notebook

CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())
TOC = yaml.safe_load((REPO / "_toc.yml").read_text())
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PAGE = "book/ch00_introduction.html"  # a real page (index.html is only a redirect)


def toc_files() -> list[str]:
    files = [TOC["root"]]
    for part in TOC.get("parts", []):
        for chapter in part.get("chapters", []):
            files.append(chapter["file"])
            files += [s["file"] for s in chapter.get("sections", [])]
    return files


def test_repository_url_is_set_in_one_place():
    assert CONFIG["repository"]["url"] == REPO_URL, "_config.yml and llmscratch.notebooks.REPO_URL disagree"
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_toc_and_book_folder_agree():
    listed = set(toc_files())
    on_disk = {str(p.relative_to(REPO).with_suffix("")) for p in (REPO / "book").glob("*") if p.suffix in (".ipynb", ".md")}
    assert listed == on_disk, f"in _toc.yml only: {listed - on_disk}; in book/ only: {on_disk - listed}"


@pytest.mark.parametrize("path", notebooks("book"), ids=lambda p: p.name)
def test_book_notebooks_are_committed_with_full_run_outputs(path):
    nb = read_notebook(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    unexecuted = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} have no output; run the notebook fully and commit it"
    params = nb.metadata.get("papermill", {}).get("parameters", {})
    assert not params.get("SMOKE", False), f"{path.name} was committed from a SMOKE run; commit a full run"
    errors = [i for i, c in enumerate(code) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: cells {errors} hold errors"
    # a cell that shows a figure must have saved one (MPLBACKEND=Agg in the kernel's environment loses them)
    # (a widget's figures live in the widget state instead)
    blank = [c.id for c in code if "plt.show()" in c.source
             and not any(k in o.get("data", {}) for o in c.get("outputs", [])
                         for k in ("image/png", "application/vnd.jupyter.widget-view+json"))]
    assert not blank, f"{path.name}: cells {blank} call plt.show() but saved no figure; re-run without MPLBACKEND=Agg"


# --- the build ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    subprocess.run([sys.executable, str(REPO / "scripts" / "vendor_js.py")], check=True, cwd=REPO)
    out = tmp_path_factory.mktemp("book")
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("jupyter-book")), "build", str(REPO), "--path-output", str(out), "-W", "-n", "--keep-going"],
        capture_output=True, text=True, cwd=REPO,
    )
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if re.search(r"WARNING|ERROR", line)]
    assert proc.returncode == 0 and "build succeeded" in log, "book build failed:\n" + "\n".join(warnings or [log[-3000:]])
    return out / "_build" / "html"


@pytest.mark.slow
@pytest.mark.book
def test_every_toc_entry_is_a_page(built_book):
    for f in toc_files():
        assert (built_book / f"{f}.html").is_file(), f


@pytest.mark.slow
@pytest.mark.book
def test_pages_load_nothing_from_the_network(built_book):
    html = (built_book / PAGE).read_text()
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', html)
    links = re.findall(r'<link[^>]*rel="stylesheet"[^>]*href="([^"]+)"', html)
    remote = [u for u in scripts + links if u.startswith(("http:", "https:", "//"))]
    assert not remote, f"{PAGE} loads {remote} from the network"
    for name in ("require.js", "widgets/embed-amd.js", "mathjax/tex-mml-chtml.js"):
        assert any(name in s for s in scripts), f"{name} is not loaded by {PAGE}"
        assert (built_book / "_static" / name).is_file(), name
    assert html.count("embed-amd.js") == 1, "the widget manager is loaded twice"
    assert "colab.research.google.com/github/" in html, "no Colab launch button"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def served(built_book):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(built_book)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()


def _chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
           f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _pixels(png: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)


@pytest.mark.slow
@pytest.mark.book
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_chapter_renders_in_a_browser(built_book, served, tmp_path):
    url = served + PAGE
    shot = tmp_path / "page.png"
    _chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", url)
    assert shot.is_file(), "Chromium wrote no screenshot"
    px = _pixels(shot)
    # not blank: many distinct colours and real contrast
    assert px.std() > 20 and len(np.unique(px.reshape(-1, 3), axis=0)) > 200, "the page looks blank"

    # the theme's CSS loaded: the same page without its stylesheets looks clearly different
    bare_html = re.sub(r'<link[^>]*rel="stylesheet"[^>]*>', "", (built_book / PAGE).read_text())
    bare = built_book / "book" / "_bare_test_page.html"
    bare.write_text(bare_html)
    try:
        shot_bare = tmp_path / "bare.png"
        _chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot_bare}", served + "book/_bare_test_page.html")
        diff = np.abs(_pixels(shot_bare) - px).mean(axis=2)
        assert (diff > 30).mean() > 0.05, "styled and unstyled pages look the same: the theme CSS did not load"
    finally:
        bare.unlink()

    # scripts ran offline: MathJax typeset the equation and the widget manager drew the slider
    dom = _chromium(tmp_path, "--dump-dom", url).stdout
    assert "mjx-container" in dom, "MathJax did not render (vendored mathjax not loaded?)"
    assert "widget-slider" in dom, "the ipywidgets slider was not rendered (vendored widget manager not loaded?)"


def test_every_lab_has_open_in_colab_links():
    """Students reach each lab from the README and from the book's instructor page."""
    from llmscratch.notebooks import colab_url

    readme = (REPO / "README.md").read_text()
    instructors = (REPO / "book" / "instructors.md").read_text()
    for lab in notebooks("solutions"):
        url = colab_url(f"exercises/{lab.name}")
        assert url in readme, f"README.md has no Open-in-Colab link for {lab.name}"
        assert url in instructors, f"book/instructors.md has no Open-in-Colab link for {lab.name}"
