"""Put the JavaScript the HTML book loads into book/_vendor/, so every page renders without the network.

Jupyter Book 1 loads RequireJS and the ipywidgets HTML manager (to show widgets saved in notebooks) and MathJax
(equations) from CDNs by default. This script installs the pinned npm packages of scripts/vendor/package.json
(`npm ci`, from the lock file) and copies just the files the pages use:

    book/_vendor/require.js                     RequireJS (AMD loader the widget manager needs)
    book/_vendor/widgets/embed-amd.js + fonts   @jupyter-widgets/html-manager (renders saved widget state)
    book/_vendor/mathjax/tex-mml-chtml.js       MathJax 3 and the CHTML fonts it loads relative to itself

_config.yml points Sphinx at these (html_static_path, mathjax_path, nb_ipywidgets_js). The folder is not named
_static on purpose: Jupyter Book adds every .js in a source `_static/` to each page, which would load them twice.
Run: python scripts/vendor_js.py   (idempotent; needs node/npm, which reach the npm registry)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NPM_DIR = ROOT / "scripts" / "vendor"
OUT = ROOT / "book" / "_vendor"

FONT_SUFFIXES = {".woff", ".woff2", ".eot", ".ttf", ".svg"}


def npm_install() -> Path:
    modules = NPM_DIR / "node_modules"
    stamp = modules / ".package-lock.json"
    if stamp.is_file() and stamp.stat().st_mtime >= (NPM_DIR / "package-lock.json").stat().st_mtime:
        return modules
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("scripts/vendor_js.py: npm is not installed. Install Node.js (e.g. `apt-get install nodejs npm`), "
                 "then run this script again; the book needs it to render widgets and equations offline.")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NPM_DIR, check=True)
    return modules


def copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists() or dest.stat().st_size != src.stat().st_size or dest.stat().st_mtime < src.stat().st_mtime:
        shutil.copy2(src, dest)


def main() -> int:
    modules = npm_install()
    copy(modules / "requirejs" / "require.js", OUT / "require.js")
    dist = modules / "@jupyter-widgets" / "html-manager" / "dist"
    copy(dist / "embed-amd.js", OUT / "widgets" / "embed-amd.js")
    for f in dist.iterdir():
        if f.suffix in FONT_SUFFIXES:  # font-awesome icons, loaded relative to embed-amd.js
            copy(f, OUT / "widgets" / f.name)
    es5 = modules / "mathjax" / "es5"
    copy(es5 / "tex-mml-chtml.js", OUT / "mathjax" / "tex-mml-chtml.js")
    fonts = es5 / "output" / "chtml" / "fonts" / "woff-v2"
    for f in fonts.iterdir():
        copy(f, OUT / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2" / f.name)
    n = sum(1 for _ in OUT.rglob("*") if _.is_file())
    print(f"vendored {n} files into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
