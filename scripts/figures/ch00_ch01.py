"""Draw the conceptual diagrams of chapters 0 and 1 as plain SVG files under book/figures/.

    python scripts/figures/ch00_ch01.py            # (re)writes book/figures/ch00_*.svg and ch01_*.svg

Hand-placed shapes, no plotting library and no external fonts or images: each file is self-contained, renders
offline and diffs readably. The numbers drawn are the ones the notebooks print (the GPT-2 ids of Raschka's
"Every effort moves you", the first tokens of *The Verdict*); the BPE merges are computed here with the same
rule as the chapter's by-hand loop.
"""

from __future__ import annotations

import os
import tempfile
from html import escape
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "book" / "figures"
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
# fill, stroke pairs
BLUE, GREEN, ORANGE = ("#dbeafe", "#1d4ed8"), ("#dcfce7", "#15803d"), ("#ffedd5", "#c2410c")
PURPLE, GRAY, YELLOW = ("#ede9fe", "#6d28d9"), ("#f3f4f6", "#4b5563"), ("#fef9c3", "#a16207")
INK = "#111827"


class Svg:
    """A tiny SVG writer: boxes, text, arrows; coordinates in pixels of the viewBox."""

    def __init__(self, width: int, height: int, title: str):
        self.w, self.h, self.title, self.items = width, height, title, []

    def rect(self, x, y, w, h, color=GRAY, rx=6, dash=False, sw=1.5):
        fill, stroke = color
        d = ' stroke-dasharray="5 4"' if dash else ""
        self.items.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" '
                          f'stroke="{stroke}" stroke-width="{sw}"{d}/>')

    def text(self, x, y, s, size=14, anchor="middle", weight="normal", color=INK, mono=False, italic=False):
        style = ' font-style="italic"' if italic else ""
        self.items.append(f'<text x="{x}" y="{y}" font-family="{MONO if mono else FONT}" font-size="{size}" '
                          f'text-anchor="{anchor}" font-weight="{weight}" fill="{color}"{style} '
                          f'xml:space="preserve">{escape(s)}</text>')

    def box(self, x, y, w, h, lines, color=GRAY, size=14, bold_first=False, mono=False, dash=False):
        """A rectangle with centred lines of text."""
        self.rect(x, y, w, h, color, dash=dash)
        step = size * 1.3
        top = y + h / 2 - step * (len(lines) - 1) / 2 + size * 0.35
        for i, line in enumerate(lines):
            self.text(x + w / 2, top + i * step, line, size=size, mono=mono,
                      weight="bold" if bold_first and i == 0 else "normal")

    def arrow(self, x1, y1, x2, y2, color=INK, sw=1.6, dash=False, opacity=1.0):
        d = ' stroke-dasharray="5 4"' if dash else ""
        marker = {INK: "arrow", ORANGE[1]: "arrow-o", BLUE[1]: "arrow-b", GREEN[1]: "arrow-g",
                  PURPLE[1]: "arrow-p"}.get(color, "arrow")
        self.items.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="{sw}" '
                          f'stroke-opacity="{opacity}" marker-end="url(#{marker})"{d}/>')

    def path(self, d, color=INK, sw=1.6, arrow=True, dash=False):
        marker = {ORANGE[1]: "arrow-o", BLUE[1]: "arrow-b", GREEN[1]: "arrow-g", PURPLE[1]: "arrow-p"}
        m = f' marker-end="url(#{marker.get(color, "arrow")})"' if arrow else ""
        da = ' stroke-dasharray="5 4"' if dash else ""
        self.items.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{sw}"{m}{da}/>')

    def line(self, x1, y1, x2, y2, color=INK, sw=1.5, opacity=1.0):
        self.items.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="{sw}" '
                          f'stroke-opacity="{opacity}"/>')

    def circle(self, cx, cy, r, color=GRAY):
        self.items.append(f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="{color[0]}" stroke="{color[1]}" '
                          'stroke-width="1.5"/>')

    def render(self) -> str:
        markers = "".join(
            f'<marker id="{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
            for name, color in (("arrow", INK), ("arrow-o", ORANGE[1]), ("arrow-b", BLUE[1]),
                                ("arrow-g", GREEN[1]), ("arrow-p", PURPLE[1])))
        body = "\n  ".join(self.items)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.w} {self.h}" width="{self.w}" '
                f'height="{self.h}" role="img">\n  <title>{escape(self.title)}</title>\n  <defs>{markers}</defs>\n'
                f'  <rect width="{self.w}" height="{self.h}" fill="#ffffff"/>\n  {body}\n</svg>\n')

    def save(self, name: str) -> Path:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / name
        # atomic write (the package's utils.atomic_write would import torch for a text file)
        fd, tmp = tempfile.mkstemp(dir=OUT, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.render())
        os.replace(tmp, path)
        return path


# ---- chapter 0 -------------------------------------------------------------------------------------------


def ch00_next_token() -> Svg:
    s = Svg(900, 295, "A language model predicts the next token, appends it, and repeats")
    words = ["The", " cat", " sat", " on", " the"]
    x = 20
    for w in words:
        s.box(x, 40, 70, 36, [w.strip()], BLUE)
        x += 76
    s.text(20, 25, "the text so far (the context)", size=13, anchor="start", color=BLUE[1])
    s.arrow(x + 4, 58, x + 50, 58)
    s.box(x + 54, 22, 150, 72, ["language", "model"], PURPLE, size=15, bold_first=True)
    s.arrow(x + 208, 58, x + 250, 58)
    probs = [("mat", 0.41), ("floor", 0.22), ("sofa", 0.14), ("roof", 0.08), ("…", 0.15)]
    bx = x + 256
    s.text(bx, 25, "probability of each next token", size=13, anchor="start", color=ORANGE[1])
    for i, (w, p) in enumerate(probs):
        y = 36 + i * 22
        s.text(bx + 48, y + 14, w, size=13, anchor="end")
        s.rect(bx + 54, y + 3, 200 * p, 15, ORANGE, rx=2, sw=1)
        s.text(bx + 60 + 200 * p, y + 15, f"{p:.2f}", size=12, anchor="start")
    # the loop back
    s.arrow(bx + 100, 148, bx + 100, 196)
    s.box(bx - 10, 198, 240, 34, ["pick one (e.g. the most likely)"], ORANGE, size=13)
    s.arrow(bx - 12, 215, 432, 215)
    s.box(190, 198, 240, 34, ["append \u201c mat\u201d and repeat"], BLUE, size=13)
    s.path("M 188 215 C 60 215, 40 160, 50 82")
    s.text(450, 280, "Generating text is this loop; training teaches the model the probabilities.", size=13,
           italic=True, color=GRAY[1])
    return s


def ch00_stages() -> Svg:
    stages = [
        ("data", ["collect and", "clean text"], "ch01, ch07, ch12", GRAY),
        ("tokenize", ["text \u2192 ids", "\u2192 vectors"], "ch01", BLUE),
        ("architecture", ["attention,", "Transformer blocks"], "ch01\u2013ch05", PURPLE),
        ("pretrain", ["predict the next", "token on lots of text"], "ch03, ch08, ch10", GREEN),
        ("adapt", ["fine-tune, LoRA,", "instructions"], "ch06, ch09, ch13", ORANGE),
        ("shrink & serve", ["distil, prune,", "quantize; generate"], "ch03, ch11", YELLOW),
    ]
    s = Svg(960, 190, "The stages of building a large model and the chapters that teach each one")
    w, gap = 136, 24
    for i, (name, desc, chapters, color) in enumerate(stages):
        x = 14 + i * (w + gap)
        s.rect(x, 30, w, 96, color)
        s.text(x + w / 2, 56, name, size=15, weight="bold")
        s.text(x + w / 2, 82, desc[0], size=12)
        s.text(x + w / 2, 100, desc[1], size=12)
        s.text(x + w / 2, 150, chapters, size=13, color=color[1], weight="bold")
        if i:
            s.arrow(x - gap + 2, 78, x - 3, 78)
    s.text(480, 182, "Each stage is a chapter's subject; the earlier chapters build the pieces the later ones use.",
           size=12.5, italic=True, color=GRAY[1])
    return s


# ---- chapter 1a ------------------------------------------------------------------------------------------


def ch01_text_to_vectors() -> Svg:
    tokens, ids = ["Every", " effort", " moves", " you"], [6109, 3626, 6100, 345]
    s = Svg(900, 470, "Text to tokens to ids to vectors: the input pipeline of a language model")
    s.text(450, 28, "\u201cEvery effort moves you\u201d", size=18, weight="bold")
    col0, cw = 250, 150
    labels = [(60, "text"), (120, "tokens (GPT-2 BPE)"), (180, "token ids"), (262, "token embedding"),
              (344, "+ position embedding"), (426, "= input to the model")]
    for y, lab in labels[1:]:
        s.text(230, y + 5, lab, size=13, anchor="end", color=GRAY[1])
    s.arrow(450, 38, 450, 92, sw=1.2)
    shades = ["#93c5fd", "#bfdbfe", "#3b82f6", "#dbeafe", "#60a5fa", "#1d4ed8"]
    pshades = ["#fdba74", "#fed7aa", "#fb923c", "#ffedd5", "#ea580c", "#fdba74"]
    for i, (tok, tid) in enumerate(zip(tokens, ids)):
        x = col0 + i * cw
        s.box(x, 104, 120, 32, [repr(tok)[1:-1]], BLUE, mono=True)
        s.arrow(x + 60, 138, x + 60, 162, sw=1.2)
        s.box(x + 20, 164, 80, 30, [str(tid)], GRAY, mono=True)
        s.arrow(x + 60, 196, x + 60, 244, sw=1.2)
        for k in range(6):  # a d-dimensional vector, drawn with 6 cells
            c = shades[(k + 2 * i) % 6]
            s.items.append(f'<rect x="{x + 6 + 18 * k}" y="{250}" width="18" height="24" fill="{c}" '
                           f'stroke="{BLUE[1]}" stroke-width="0.8"/>')
            c = pshades[(k + i) % 6]
            s.items.append(f'<rect x="{x + 6 + 18 * k}" y="{332}" width="18" height="24" fill="{c}" '
                           f'stroke="{ORANGE[1]}" stroke-width="0.8"/>')
            s.items.append(f'<rect x="{x + 6 + 18 * k}" y="{414}" width="18" height="24" fill="{PURPLE[0]}" '
                           f'stroke="{PURPLE[1]}" stroke-width="0.8"/>')
        s.text(x + 60, 292, f"row {tid} of the table", size=11.5, color=BLUE[1])
        s.text(x + 60, 318, "+", size=17, weight="bold")
        s.text(x + 60, 374, f"row {i} (position {i})", size=11.5, color=ORANGE[1])
        s.text(x + 60, 402, "=", size=17, weight="bold")
    s.text(20, 462, "each embedding is nn.Embedding: row i of a (rows \u00d7 d) matrix of learned numbers",
           size=12, anchor="start", italic=True, color=GRAY[1])
    s.text(880, 462, "shape (seq = 4, d)", size=12, anchor="end", color=PURPLE[1])
    return s


def bpe_merges(text: str, n: int):
    """The first ``n`` merges of byte-level BPE on ``text`` (no pre-tokenization), with the sequence after each.

    Ties go to the pair seen first, as the one-step example of ch01_tokenization (``max(counts, key=...)``).
    """
    ids = list(text.encode("utf-8"))
    names = {i: bytes([i]).decode("latin-1") for i in range(256)}
    steps = [(None, list(ids))]
    for k in range(n):
        counts = {}
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
        top = max(counts, key=counts.get)
        new = 256 + k
        names[new] = names[top[0]] + names[top[1]]
        out, i = [], 0
        while i < len(ids):
            if i < len(ids) - 1 and (ids[i], ids[i + 1]) == top:
                out.append(new)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
        steps.append(((top, new, counts[top]), list(ids)))
    return steps, names


def ch01_bpe_merges() -> Svg:
    steps, names = bpe_merges("low lower lowest", 4)
    s = Svg(960, 80 + 62 * len(steps), "Byte-pair encoding: the most frequent adjacent pair is merged, step by step")
    s.text(20, 26, "byte-level BPE on \u201clow lower lowest\u201d: each step merges the most frequent adjacent pair",
           size=14, anchor="start", weight="bold")
    for row, (merge, ids) in enumerate(steps):
        y = 48 + row * 62
        label = "16 bytes" if merge is None else f"merge {row}: " + \
            f"'{names[merge[0][0]]}' + '{names[merge[0][1]]}' \u2192 {merge[1]} (\u00d7{merge[2]})"
        s.text(20, y + 24, label.replace(" ", "\u00a0"), size=12.5, anchor="start", mono=True)
        x = 300
        for t in ids:
            w = 14 + 10 * len(names[t])
            new = t >= 256
            just = merge is not None and t == merge[1]
            color = ORANGE if just else (GREEN if new else BLUE)
            s.rect(x, y + 4, w, 30, color, rx=4)
            s.text(x + w / 2, y + 24, names[t].replace(" ", "\u2423"), size=13, mono=True)
            x += w + 4
        s.text(950, y + 24, f"{len(ids)} tokens", size=12.5, anchor="end", color=GRAY[1])
    y = 60 + 62 * len(steps)
    s.rect(300, y - 10, 14, 14, ORANGE, rx=2)
    s.text(320, y + 1, "token made by this merge", size=12, anchor="start")
    s.rect(520, y - 10, 14, 14, GREEN, rx=2)
    s.text(540, y + 1, "made by an earlier merge", size=12, anchor="start")
    s.rect(730, y - 10, 14, 14, BLUE, rx=2)
    s.text(750, y + 1, "a byte (\u2423 = space)", size=12, anchor="start")
    return s


def ch01_sliding_window() -> Svg:
    toks = ["I", " H", "AD", " always", " thought", " Jack", " G", "is", "burn", " rather", " a"]
    s = Svg(960, 330, "Sliding windows: inputs of max_length tokens, targets shifted by one, windows stride apart")
    widths = [max(44, 11 * len(t) + 16) for t in toks]
    xs = [20]
    for w in widths[:-1]:
        xs.append(xs[-1] + w + 6)
    y0 = 130
    for x, w, t in zip(xs, widths, toks):
        s.box(x, y0, w, 32, [t.replace(" ", "\u2423")], GRAY, mono=True, size=13)

    def span(i, j, y, color, label):
        x1, x2 = xs[i] - 3, xs[j] + widths[j] + 3
        s.rect(x1, y, x2 - x1, 26, color, rx=4)
        s.text((x1 + x2) / 2, y + 18, label, size=12.5, weight="bold", color=color[1])
        s.line(x1, y + 26 if y < y0 else y, x1, y0 + (0 if y < y0 else 32), color[1], sw=1, opacity=0.6)
        s.line(x2, y + 26 if y < y0 else y, x2, y0 + (0 if y < y0 else 32), color[1], sw=1, opacity=0.6)

    span(0, 3, 84, BLUE, "input x\u2081 (max_length = 4)")
    span(4, 7, 84, BLUE, "input x\u2082")
    span(1, 4, 184, ORANGE, "target y\u2081 = x\u2081 shifted by one")
    span(5, 8, 216, ORANGE, "target y\u2082")
    s.path(f"M {xs[0] + 10} 80 C {xs[0] + 10} 50, {xs[4] + 10} 50, {xs[4] + 10} 80", color=GREEN[1])
    s.text(xs[4] + 30, 62, "stride = 4: the next window starts 4 tokens later", size=12.5, anchor="start",
           color=GREEN[1])
    s.text(20, 270, "one window holds max_length prediction tasks:", size=13, anchor="start", weight="bold")
    tasks = ["I \u2192 \u2423H", "I \u2423H \u2192 AD", "I \u2423H AD \u2192 \u2423always",
             "I \u2423H AD \u2423always \u2192 \u2423thought"]
    x = 20
    for t in tasks:
        w = 11 * len(t) + 20
        s.box(x, 282, w, 30, [t], YELLOW, mono=True, size=12.5)
        x += w + 10
    return s


# ---- chapter 1b ------------------------------------------------------------------------------------------


def _encoder(s: Svg, x0, y0, src, step):
    """Encoder states h_j above source tokens; returns the centres of the states."""
    centres = []
    for j, tok in enumerate(src):
        x = x0 + j * step
        s.box(x, y0 + 70, 46, 28, [tok], GRAY, mono=True)
        s.arrow(x + 23, y0 + 68, x + 23, y0 + 44, sw=1.2)
        s.box(x - 2, y0 + 12, 50, 30, [f"h{'₁₂₃₄'[j]}"], BLUE)
        if j:
            s.line(x - step + 48, y0 + 22, x - 2, y0 + 22, BLUE[1], sw=1.2)
            s.line(x - step + 48, y0 + 32, x - 2, y0 + 32, BLUE[1], sw=1.2)
        centres.append((x + 23, y0 + 12))
    s.text(x0 - 14, y0 + 32, "encoder (bi-GRU)", size=12.5, anchor="end", color=BLUE[1])
    s.text(x0 - 14, y0 + 89, "source", size=12.5, anchor="end", color=GRAY[1])
    return centres


def _decoder(s: Svg, x0, y0, outs, step, gap=0):
    """Decoder states s_i (inputs below, outputs above); returns the centres of the states' bottoms."""
    centres = []
    ins = ["<bos>"] + outs[:-1]
    for i, (inp, out) in enumerate(zip(ins, outs)):
        x = x0 + i * step
        s.box(x - 6, y0 + 70 + gap, 58, 28, [inp], GRAY, mono=True, size=12)
        s.arrow(x + 12, y0 + 68 + gap, x + 12, y0 + 46, sw=1.2)
        s.box(x - 2, y0 + 14, 50, 30, [f"s{'₁₂₃₄₅'[i]}"], GREEN)
        s.arrow(x + 23, y0 + 12, x + 23, y0 - 8, sw=1.2)
        s.text(x + 23, y0 - 14, out, size=13, mono=True, weight="bold")
        if i:
            s.arrow(x - step + 48, y0 + 29, x - 4, y0 + 29, GREEN[1], sw=1.2)
        centres.append((x + 23, y0 + 44))
    s.text(x0 + (len(outs) - 1) * step / 2 + 23, y0 + 116 + gap, "decoder (GRU cell), fed its previous token",
           size=12.5, color=GREEN[1])
    return centres


def ch01_seq2seq() -> Svg:
    src, outs = ["a", "b", "c", "d"], ["d", "c", "b", "a", "<eos>"]
    s = Svg(960, 600, "Encoder-decoder without attention (one fixed vector) and with attention (a new context "
            "each step)")
    # top: the fixed vector
    s.text(20, 26, "without attention: everything passes through one fixed vector c",
           size=15, anchor="start", weight="bold")
    _encoder(s, 150, 60, src, 70)
    s.box(450, 72, 50, 30, ["c"], ORANGE, size=15)
    s.arrow(150 + 3 * 70 + 50, 87, 446, 87, ORANGE[1])
    s.text(475, 120, "summary,", size=11.5, color=ORANGE[1])
    s.text(475, 134, "fed to every step", size=11.5, color=ORANGE[1])
    dec = _decoder(s, 590, 90, outs, 70)
    bus = 90 + 58
    s.path(f"M 500 87 C 540 87, 540 {bus}, 570 {bus} L {dec[-1][0] + 20} {bus}", color=ORANGE[1], sw=1.4,
           arrow=False)
    for (x, y) in dec:
        s.arrow(x + 10, bus, x + 10, y + 2, ORANGE[1], sw=1.2)
    s.line(20, 262, 940, 262, GRAY[1], sw=0.8, opacity=0.5)
    # bottom: attention
    s.text(20, 290, "with attention: at step i the decoder mixes all encoder states, c\u1d62 = \u03a3\u2c7c "
           "\u03b1\u1d62\u2c7c h\u2c7c", size=15, anchor="start", weight="bold")
    dec = _decoder(s, 590, 346, outs, 70, gap=60)
    enc = _encoder(s, 150, 420, src, 70)
    # the context of step 2 (it writes "c"): for a reversal the weight peaks on h3
    sx, sy = dec[1][0] + 10, dec[1][1] + 36
    s.circle(sx, sy, 15, ORANGE)
    s.text(sx, sy + 5, "\u03a3", size=15)
    s.arrow(sx, sy - 15, sx, dec[1][1] + 2, ORANGE[1], sw=1.4)
    s.text(sx + 20, sy - 12, "c\u2082", size=13, color=ORANGE[1], weight="bold", anchor="start")
    alphas = [0.05, 0.15, 0.7, 0.1]
    for j, ((hx, hy), a) in enumerate(zip(enc, alphas)):
        top = hy - 80 - 10 * j
        s.path(f"M {hx} {hy} C {hx} {top}, {sx - 80} {sy - 10}, {sx - 15} {sy}", color=ORANGE[1],
               sw=1 + 6 * a, arrow=False)
        s.text(hx + 6, hy - 8, f"\u03b1\u2082{'₁₂₃₄'[j]}={a}", size=11, anchor="start", color=ORANGE[1])
    s.text(480, 588, "weights \u03b1\u2082\u2c7c = softmax over j of v\u1d40 tanh(W_q s\u2081 + W_k h\u2c7c)"
           ": to write the 2nd output of a reversal, look at the 3rd of 4 inputs", size=12.5,
           italic=True, color=GRAY[1])
    return s


def ch01_teacher_forcing() -> Svg:
    s = Svg(960, 250, "Teacher forcing during training versus greedy decoding at test time")
    outs_true, outs_pred = ["d", "c", "b", "a", "<eos>"], ["d", "c", "a", "b", "<eos>"]

    def row(x0, title, inputs, outs, feed_color, note):
        s.text(x0, 26, title, size=14.5, anchor="start", weight="bold")
        for i, (inp, out) in enumerate(zip(inputs, outs)):
            x = x0 + 20 + i * 84
            s.box(x - 8, 170, 64, 28, [inp], feed_color, mono=True, size=12.5)
            s.arrow(x + 24, 168, x + 24, 142, sw=1.2)
            s.box(x, 108, 48, 32, [f"s{'₁₂₃₄₅'[i]}"], GREEN)
            s.arrow(x + 24, 106, x + 24, 82, sw=1.2)
            s.text(x + 24, 72, out, size=13.5, mono=True, weight="bold")
            if i:
                s.arrow(x - 36, 124, x - 2, 124, GREEN[1], sw=1.2)
        s.text(x0, 226, note, size=12.5, anchor="start", italic=True, color=GRAY[1])

    row(20, "training: teacher forcing", ["<bos>"] + outs_true[:-1], [f"p({o})" for o in outs_true], BLUE,
        "inputs are the TRUE previous tokens: every step at once, loss on all")
    for i in range(4):  # greedy: the prediction becomes the next input
        x = 520 + 20 + i * 84
        s.path(f"M {x + 34} 66 C {x + 60} 66, {x + 64} 200, {x + 84 + 10} 184", color=ORANGE[1], sw=1.2)
    row(520, "test: greedy decoding", ["<bos>"] + outs_pred[:-1], outs_pred, ORANGE,
        "inputs are the model's OWN previous argmax: one step at a time")
    s.line(490, 20, 490, 236, GRAY[1], sw=0.8, opacity=0.5)
    return s


def ch01_pre_post_ln() -> Svg:
    s = Svg(760, 330, "Post-LN and pre-LN residual blocks")

    def block(x0, title, pre):
        s.text(x0 + 150, 26, title, size=15, weight="bold")
        s.arrow(x0 + 150, 310, x0 + 150, 262)
        s.text(x0 + 160, 304, "x", size=14, anchor="start", mono=True)
        s.circle(x0 + 150, 110 if pre else 150, 14, GRAY)
        s.text(x0 + 150, (110 if pre else 150) + 5, "+", size=16)
        if pre:
            s.box(x0 + 190, 220, 100, 30, ["LayerNorm"], PURPLE, size=13)
            s.box(x0 + 190, 150, 100, 34, ["f (attention", "or MLP)"], GREEN, size=12)
            s.path(f"M {x0 + 150} 258 L {x0 + 150} 126", color=BLUE[1], sw=3, arrow=False)
            s.path(f"M {x0 + 150} 250 C {x0 + 170} 250, {x0 + 240} 270, {x0 + 240} 252")
            s.arrow(x0 + 240, 218, x0 + 240, 186)
            s.path(f"M {x0 + 240} 148 C {x0 + 240} 110, {x0 + 200} 110, {x0 + 166} 110")
            s.arrow(x0 + 150, 96, x0 + 150, 60)
            s.text(x0 + 150, 52, "x + f(LN(x))", size=14, mono=True)
            s.text(x0 + 60, 190, "identity path", size=12, color=BLUE[1], anchor="middle")
        else:
            s.box(x0 + 190, 200, 100, 34, ["f (attention", "or MLP)"], GREEN, size=12)
            s.path(f"M {x0 + 150} 258 L {x0 + 150} 166", color=BLUE[1], sw=3, arrow=False)
            s.path(f"M {x0 + 150} 250 C {x0 + 170} 250, {x0 + 240} 262, {x0 + 240} 238")
            s.path(f"M {x0 + 240} 198 C {x0 + 240} 150, {x0 + 200} 150, {x0 + 166} 150")
            s.arrow(x0 + 150, 136, x0 + 150, 112)
            s.box(x0 + 100, 78, 100, 30, ["LayerNorm"], PURPLE, size=13)
            s.arrow(x0 + 150, 76, x0 + 150, 60)
            s.text(x0 + 150, 52, "LN(x + f(x))", size=14, mono=True)
            s.text(x0 + 60, 210, "residual path", size=12, color=BLUE[1], anchor="middle")
            s.text(x0 + 60, 226, "goes through LN", size=12, color=BLUE[1], anchor="middle")

    block(20, "post-LN (Transformer 2017, BERT)", pre=False)
    block(400, "pre-LN (GPT-2, Llama, ViT)", pre=True)
    s.line(380, 20, 380, 320, GRAY[1], sw=0.8, opacity=0.5)
    return s


FIGURES = {
    "ch00_next_token.svg": ch00_next_token,
    "ch00_stages.svg": ch00_stages,
    "ch01_text_to_vectors.svg": ch01_text_to_vectors,
    "ch01_bpe_merges.svg": ch01_bpe_merges,
    "ch01_sliding_window.svg": ch01_sliding_window,
    "ch01_seq2seq.svg": ch01_seq2seq,
    "ch01_teacher_forcing.svg": ch01_teacher_forcing,
    "ch01_pre_post_ln.svg": ch01_pre_post_ln,
}

if __name__ == "__main__":
    for name, draw in FIGURES.items():
        print("wrote", draw().save(name).relative_to(OUT.parents[1]))
