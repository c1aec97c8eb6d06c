"""Draw the conceptual diagrams of chapters 2 and 3 as plain SVG files in book/figures/.

    python scripts/figures/ch02_ch03_figures.py           # writes book/figures/ch02_*.svg and ch03_*.svg

Hand-placed shapes and text only: no external fonts, images or URLs, so the files render offline. Each figure
has a <title> and a <desc> (the same alt text the chapter gives its {figure} directive).
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "pkg"))
from llmscratch.utils import atomic_write  # noqa: E402

OUT = REPO / "book" / "figures"
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
INK, GRID, MASK = "#333333", "#888888", "#d9d9d9"
Q, K, V, OUTC = "#4c78a8", "#f58518", "#54a24b", "#b279a2"
PALE = {Q: "#dbe6f2", K: "#fde3cc", V: "#dcefd8", OUTC: "#eee0ea", INK: "#f2f2f2"}
HEADS = ["#4c78a8", "#72b7b2", "#e45756", "#eeca3b"]


class Svg:
    def __init__(self, width: int, height: int, title: str, desc: str):
        self.w, self.h = width, height
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" font-family="{FONT}" font-size="13">',
            f"<title>{escape(title)}</title>",
            f"<desc>{escape(desc)}</desc>",
            "<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' markerHeight='7' "
            f"orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='{INK}'/></marker></defs>",
            f'<rect width="{width}" height="{height}" fill="white"/>',
        ]

    def text(self, x, y, s, size=13, anchor="middle", weight="normal", color=INK, italic=False):
        style = ' font-style="italic"' if italic else ""
        self.parts.append(f'<text x="{x}" y="{y}" font-size="{size}" text-anchor="{anchor}" '
                          f'font-weight="{weight}" fill="{color}"{style}>{escape(s)}</text>')

    def rect(self, x, y, w, h, fill="white", stroke=INK, rx=6, dash=None, width=1.3):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" '
                          f'stroke="{stroke}" stroke-width="{width}"{d}/>')

    def box(self, x, y, w, h, label, fill="#f2f2f2", sub=None, size=13):
        self.rect(x, y, w, h, fill=fill)
        if sub:
            self.text(x + w / 2, y + h / 2 - 3, label, size=size, weight="bold")
            self.text(x + w / 2, y + h / 2 + 13, sub, size=11)
        else:
            self.text(x + w / 2, y + h / 2 + 4.5, label, size=size, weight="bold")

    def line(self, x1, y1, x2, y2, arrow=True, dash=None, color=INK, width=1.4):
        m = ' marker-end="url(#arrow)"' if arrow else ""
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" '
                          f'stroke-width="{width}"{d}{m}/>')

    def path(self, d, arrow=True, dash=None, color=INK, width=1.4):
        m = ' marker-end="url(#arrow)"' if arrow else ""
        da = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{width}"{da}{m}/>')

    def circle(self, x, y, r, label):
        self.parts.append(f'<circle cx="{x}" cy="{y}" r="{r}" fill="white" stroke="{INK}" stroke-width="1.4"/>')
        self.text(x, y + 5, label, size=16, weight="bold")

    def grid(self, x, y, rows, cols, cell, fill, masked=None, values=None, stroke=GRID):
        """A matrix of cells; ``masked(i, j)`` -> grey cell; ``values(i, j)`` -> a text in the cell."""
        for i in range(rows):
            for j in range(cols):
                f = MASK if masked and masked(i, j) else (fill(i, j) if callable(fill) else fill)
                self.parts.append(f'<rect x="{x + j * cell}" y="{y + i * cell}" width="{cell}" '
                                  f'height="{cell}" fill="{f}" stroke="{stroke}" stroke-width="0.8"/>')
                if values:
                    v = values(i, j)
                    if v:
                        self.text(x + j * cell + cell / 2, y + i * cell + cell / 2 + 4, v, size=10)

    def save(self, name: str) -> Path:
        path = OUT / name
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.parts + ["</svg>"]) + "\n")
        return path


def _shade(base_rgb, t):
    """Mix white with a colour: t in [0, 1] -> hex."""
    r, g, b = (int(base_rgb[i:i + 2], 16) for i in (1, 3, 5))
    mix = [round(255 + (c - 255) * t) for c in (r, g, b)]
    return "#%02x%02x%02x" % tuple(mix)


# ------------------------------------------------------------------------------------------------ chapter 2
def qkv_scores() -> Path:
    s = Svg(980, 420, "Queries, keys, values and the masked score matrix",
            "The input X (T by d_in) is multiplied by W_q, W_k and W_v to give Q, K and V (T by d_k each). "
            "The scores Q K-transpose over the square root of d_k form a T by T matrix, one row per query and "
            "one column per key; entries above the diagonal are set to minus infinity by the causal mask. A "
            "softmax over each row gives lower-triangular weights whose rows sum to one; the weights times V "
            "give the context vectors Z.")
    T, c = 6, 15
    # X
    s.grid(20, 150, T, 3, c, "#eeeeee")
    s.text(42, 140, "X", weight="bold")
    s.text(42, 260, "T × d_in", size=11)
    # Q, K, V
    ys = {"Q": 40, "K": 160, "V": 280}
    for name, col, w in (("Q", Q, "W_q"), ("K", K, "W_k"), ("V", V, "W_v")):
        y = ys[name]
        s.line(68, 195, 150, y + 45)
        s.text(112, y + 35 if name != "V" else y + 60, f"· {w}", size=12, italic=True)
        s.grid(160, y, T, 2, c, PALE[col], stroke=col)
        s.text(175, y - 8, name, weight="bold", color=col)
        s.text(222, y + 50, "T × d_k", size=11, anchor="start")
    # scores
    cs = 28
    x0, y0 = 330, 110
    s.text(x0 + 3 * cs, 52, "scores = Q Kᵀ / √d_k", weight="bold")
    s.text(x0 + 3 * cs, 70, "T × T: row i = query i, column j = key j", size=11)
    s.line(195, 85, x0 - 8, y0 + 30)  # Q -> scores (rows)
    s.line(195, 205, x0 - 8, y0 + 120)  # K -> scores (columns)
    s.text(285, y0 - 8, "queries", size=11, color=Q)
    s.text(262, y0 + 132, "keys (Kᵀ)", size=11, color=K)
    s.grid(x0, y0, T, T, cs, lambda i, j: "#f4f7fb", masked=lambda i, j: j > i,
           values=lambda i, j: "−∞" if j > i else "s")
    for i in range(T):
        s.text(x0 - 10, y0 + i * cs + cs / 2 + 4, f"q{i}", size=10, anchor="end", color=Q)
        s.text(x0 + i * cs + cs / 2, y0 + T * cs + 14, f"k{i}", size=10, color=K)
    s.text(x0 + 3 * cs, y0 + T * cs + 36, "causal mask: a query never sees a later key", size=11, italic=True)
    # softmax -> weights
    x1 = 600
    s.line(x0 + T * cs + 10, y0 + 3 * cs, x1 - 10, y0 + 3 * cs)
    s.text((x0 + T * cs + x1) / 2, y0 + 3 * cs - 8, "softmax", size=11, italic=True)
    s.text((x0 + T * cs + x1) / 2, y0 + 3 * cs + 16, "per row", size=11, italic=True)
    weights = [[1 / (i + 1) if j <= i else 0 for j in range(T)] for i in range(T)]
    s.grid(x1, y0, T, T, cs, lambda i, j: _shade(V, 0.25 + 0.75 * weights[i][j]), masked=lambda i, j: j > i,
           values=lambda i, j: "0" if j > i else "")
    s.text(x1 + 3 * cs, 52, "attention weights", weight="bold")
    s.text(x1 + 3 * cs, 70, "each row sums to 1", size=11)
    # times V -> Z
    x2 = 850
    s.line(x1 + T * cs + 10, y0 + 3 * cs, x2 - 10, y0 + 3 * cs)
    s.text((x1 + T * cs + x2) / 2, y0 + 3 * cs - 8, "· V", size=12, italic=True)
    s.path(f"M 195 {ys['V'] + 90} L 195 400 L {x2 + 15} 400 L {x2 + 15} {y0 + T * c + 14}", dash="5,4")
    s.text(520, 394, "values", size=11, color=V)
    s.grid(x2, y0, T, 2, c, PALE[OUTC], stroke=OUTC)
    s.text(x2 + 15, y0 - 10, "Z", weight="bold", color=OUTC)
    s.text(x2 + 15, y0 + T * c + 30, "T × d_k", size=11)
    s.text(x2 + 15, 52, "context", weight="bold")
    return s.save("ch02_qkv_scores.svg")


def heads() -> Path:
    s = Svg(980, 400, "Splitting and merging attention heads",
            "The fused projection gives (B, T, 3 d_out), split into Q, K and V of shape (B, T, d_out). Each is "
            "viewed as (B, T, h, d_h) and transposed to (B, h, T, d_h). Attention runs on all heads at once, "
            "giving a context of shape (B, h, T, d_h), which is transposed back to (B, T, h, d_h) and reshaped "
            "to (B, T, d_out), heads side by side, before the output projection.")
    h, bw = 4, 30

    def bar(x, y, label, sub, colors, bw=bw):
        for i, col in enumerate(colors):
            s.rect(x + i * bw, y, bw, 34, fill=_shade(col, 0.55), stroke=col, rx=0)
        s.text(x + len(colors) * bw / 2, y - 10, label, weight="bold")
        s.text(x + len(colors) * bw / 2, y + 52, sub, size=11)

    def stack(x, y, label, sub):
        for i, col in reversed(list(enumerate(HEADS))):
            s.rect(x + i * 10, y + i * 10, 70, 46, fill=_shade(col, 0.55), stroke=col, rx=2)
            s.text(x + i * 10 + 35, y + i * 10 + 27, f"head {i}", size=10)
        s.text(x + 50, y - 10, label, weight="bold")
        s.text(x + 50, y + 110, sub, size=11)

    # top row: split
    y = 60
    s.text(20, 24, "split into heads", size=14, weight="bold", anchor="start")
    bar(20, y, "qkv(x)", "(B, T, 3·d_out)", [Q, K, V], bw=44)
    s.line(160, y + 17, 215, y + 17)
    s.text(188, y + 8, "split", size=11, italic=True)
    bar(225, y, "Q (and K, V)", "(B, T, d_out)", HEADS)
    s.line(355, y + 17, 410, y + 17)
    s.text(383, y + 8, "view", size=11, italic=True)
    for i, col in enumerate(HEADS):
        s.rect(420, y - 6 + i * 12, 120, 10, fill=_shade(col, 0.55), stroke=col, rx=0)
    s.text(480, y - 14, "(B, T, h, d_h)", weight="bold")
    s.text(480, y + 69, "h blocks of d_h features", size=11)
    s.line(550, y + 17, 610, y + 17)
    s.text(580, y + 8, "transpose", size=11, italic=True)
    stack(620, y - 10, "(B, h, T, d_h)", "heads next to the batch")
    # attention
    s.line(700, 170, 700, 215)
    s.rect(560, 215, 300, 44, fill="#f2f2f2")
    s.text(710, 235, "attention on every head at once", weight="bold")
    s.text(710, 251, "batched matmuls: scores (B, h, T, T)", size=11)
    s.line(700, 259, 700, 290)
    # bottom row: merge (right to left)
    y2 = 300
    s.text(20, 282, "merge the heads", size=14, weight="bold", anchor="start")
    stack(620, y2, "", "context (B, h, T, d_h)")
    s.line(610, y2 + 30, 550, y2 + 30)
    s.text(580, y2 + 21, "transpose", size=11, italic=True)
    for i, col in enumerate(HEADS):
        s.rect(420, y2 + 8 + i * 12, 120, 10, fill=_shade(col, 0.55), stroke=col, rx=0)
    s.text(480, y2 + 82, "(B, T, h, d_h)", size=11)
    s.line(410, y2 + 30, 355, y2 + 30)
    s.text(383, y2 + 21, "reshape", size=11, italic=True)
    bar(225, y2 + 13, "", "(B, T, d_out): heads side by side", HEADS)
    s.line(220, y2 + 30, 160, y2 + 30)
    s.text(190, y2 + 21, "proj", size=11, italic=True)
    s.rect(40, y2 + 13, 110, 34, fill=PALE[OUTC], stroke=OUTC, rx=0)
    s.text(95, y2 + 35, "output", weight="bold")
    s.text(95, y2 + 65, "(B, T, d_out)", size=11)
    return s.save("ch02_heads.svg")


# ------------------------------------------------------------------------------------------------ chapter 3
def gpt_block() -> Path:
    s = Svg(600, 640, "A GPT-2 transformer block (pre-LN)",
            "The residual stream x of shape (batch, T, d_model) enters at the bottom. Branch one: LayerNorm 1, "
            "causal multi-head attention, dropout, added back to the stream. Branch two: LayerNorm 2, the "
            "feed-forward network (Linear d to 4d, GELU, Linear 4d to d), dropout, added back. The output has "
            "the shape of the input.")
    xs = 150  # the residual stream's vertical line
    s.text(xs, 628, "x  (batch, T, d_model)", weight="bold")
    s.text(xs, 16, "out  (batch, T, d_model)", weight="bold")
    s.line(xs, 610, xs, 345, arrow=False, width=2.4)
    s.circle(xs, 330, 15, "+")
    s.line(xs, 315, xs, 70, arrow=False, width=2.4)
    s.circle(xs, 55, 15, "+")
    s.line(xs, 40, xs, 24, width=2.4)
    s.text(xs - 22, 470, "residual stream", size=11, italic=True, anchor="end")
    s.text(xs - 22, 200, "(the shortcut)", size=11, italic=True, anchor="end")
    bx, bw = 270, 250

    def branch(y_from, y_plus, boxes):
        # boxes: list of (label, sub, fill), stacked upwards from y_from
        s.path(f"M {xs} {y_from} L {bx + bw / 2} {y_from} L {bx + bw / 2} {y_from - 18}")
        y = y_from - 18
        for i, (label, sub, fill) in enumerate(boxes):
            hgt = 46 if sub else 34
            y -= hgt
            s.box(bx, y, bw, hgt, label, fill=fill, sub=sub)
            if i < len(boxes) - 1:
                s.line(bx + bw / 2, y, bx + bw / 2, y - 14)
                y -= 14
        s.path(f"M {bx + bw / 2} {y} L {bx + bw / 2} {y_plus} L {xs + 17} {y_plus}")

    branch(590, 330, [("LayerNorm 1", None, "#f2f2f2"),
                      ("causal multi-head attention", "h heads, fused QKV (chapter 2)", PALE[Q]),
                      ("dropout", None, "#f2f2f2")])
    branch(300, 55, [("LayerNorm 2", None, "#f2f2f2"),
                     ("feed-forward network", "Linear d→4d, GELU, Linear 4d→d", PALE[V]),
                     ("dropout", None, "#f2f2f2")])
    s.text(bx + bw / 2, 620, "x ← x + Attn(LN₁(x))", size=12, italic=True)
    s.text(bx + bw / 2, 328, "x ← x + FF(LN₂(x))", size=12, italic=True)
    return s.save("ch03_gpt_block.svg")


def gpt_model() -> Path:
    s = Svg(600, 660, "The whole GPT model",
            "Token ids (batch, T) go through the token embedding, and the position embedding of positions 0 to "
            "T-1 is added, giving (batch, T, d_model); then n_layers transformer blocks; then the final "
            "LayerNorm; then the LM head, a product with the transposed token embedding (tied weights), giving "
            "logits (batch, T, vocab). The last position's logits choose the next token.")
    cx, w = 250, 280
    x = cx - w / 2
    s.text(cx, 640, "token ids  (batch, T)", weight="bold")
    s.line(cx - 70, 625, cx - 70, 598)
    s.line(cx + 70, 625, cx + 70, 598)
    s.box(x - 20, 552, 150, 46, "token embedding", fill=PALE[Q], sub="V × d  (50,257 × 768)")
    s.box(cx + 10, 552, 150, 46, "position embedding", fill=PALE[K], sub="ctx × d  (1,024 × 768)")
    s.line(cx - 70, 552, cx - 14, 527)
    s.line(cx + 70, 552, cx + 14, 527)
    s.circle(cx, 512, 15, "+")
    s.line(cx, 497, cx, 480)
    s.box(x, 446, w, 34, "dropout", fill="#f2f2f2")
    s.line(cx, 446, cx, 426)
    s.rect(x - 10, 268, w + 20, 158, fill="white", dash="6,4")
    s.text(x + w + 18, 282, "× n_layers", size=12, weight="bold", anchor="end")
    for i, y in enumerate((374, 322)):
        s.box(x + 10, y, w - 20, 40, f"transformer block {i + 1}", fill=PALE[V], sub="(see the block figure)")
    s.text(cx, 304, "⋮", size=18)
    s.line(cx, 268, cx, 248)
    s.text(cx + w / 2 + 14, 260, "(batch, T, d_model)", size=11, anchor="start")
    s.box(x, 214, w, 34, "final LayerNorm", fill="#f2f2f2")
    s.line(cx, 214, cx, 194)
    s.box(x, 148, w, 46, "LM head", fill=PALE[OUTC], sub="h · W_embᵀ : scores for every token")
    s.line(cx, 148, cx, 118)
    s.text(cx, 108, "logits  (batch, T, vocab)", weight="bold")
    s.text(cx, 80, "last position → softmax → next token", size=12, italic=True)
    s.line(cx, 68, cx, 40)
    s.text(cx, 30, "generate: append it and repeat", size=12)
    # weight tying
    s.path(f"M {x - 20} 575 L {x - 45} 575 L {x - 45} 171 L {x - 6} 171", dash="6,4", color=Q)
    s.text(x - 52, 380, "same matrix (weight tying)", size=11, color=Q, anchor="middle",
           italic=True)
    s.parts[-1] = s.parts[-1].replace("<text ", f'<text transform="rotate(-90 {x - 52} 380)" ', 1)
    return s.save("ch03_gpt_model.svg")


def kv_cache() -> Path:
    s = Svg(980, 400, "Prefill and one decoding step with a KV cache",
            "Prefill: the prompt's tokens go through the model once; their keys and values fill the first slots "
            "of a preallocated cache of shape (batch, heads, max_len, head_dim). Decoding step: only the new "
            "token goes through the model; its query attends to all cached keys and values plus its own, and "
            "its key and value are written into the next free slot.")
    c, max_len, n = 34, 8, 5

    def cache_row(x, y, label, col, filled, new=None):
        s.text(x - 10, y + c / 2 + 5, label, weight="bold", color=col, anchor="end")
        for j in range(max_len):
            fill = _shade(col, 0.45) if j < filled else ("#ffffff")
            if new is not None and j == new:
                fill = _shade(col, 0.9)
            s.rect(x + j * c, y, c, c, fill=fill, stroke=col, rx=0)
            if j < filled or j == new:
                s.text(x + j * c + c / 2, y + c / 2 + 4, f"{label.lower()}{j}", size=10)

    # prefill
    s.text(20, 28, "1. prefill: the whole prompt at once", size=14, weight="bold", anchor="start")
    for j in range(n):
        s.rect(40 + j * 52, 50, 46, 28, fill="#f2f2f2")
        s.text(63 + j * 52, 69, f"t{j}", size=12)
    s.line(170, 84, 170, 110)
    s.box(40, 110, 250, 36, "model (every layer)", fill=PALE[V])
    s.line(170, 146, 170, 168)
    s.text(170, 186, "write k0..k4, v0..v4", size=11, italic=True)
    cache_row(60, 210, "K", K, n)
    cache_row(60, 256, "V", V, n)
    s.text(60 + max_len * c / 2, 310, "cache of one layer: (batch, heads, max_len, head_dim)", size=11)
    s.text(60 + max_len * c / 2, 328, "filled: 5 of max_len = 8 positions", size=11)
    # step
    x0 = 520
    s.line(420, 200, 500, 200)
    s.text(460, 192, "next token", size=11, italic=True)
    s.text(20 + x0, 28, "2. one decoding step: only the new token", size=14, weight="bold", anchor="start")
    s.rect(x0 + 20, 50, 46, 28, fill=_shade(Q, 0.35))
    s.text(x0 + 43, 69, "t5", size=12)
    s.line(x0 + 43, 84, x0 + 43, 110)
    s.box(x0 + 10, 110, 200, 36, "model (every layer)", fill=PALE[V])
    s.line(x0 + 110, 146, x0 + 110, 168)
    s.text(x0 + 240, 124, "q5 · [k0 … k5]ᵀ: one row of scores", size=11, anchor="start")
    s.text(x0 + 240, 142, "softmax → weights · [v0 … v5]", size=11, anchor="start")
    s.text(x0 + 110, 186, "append k5, v5 (slot 5)", size=11, italic=True)
    cache_row(x0 + 40, 210, "K", K, n, new=5)
    cache_row(x0 + 40, 256, "V", V, n, new=5)
    # the score row
    s.text(x0 + 40 + max_len * c / 2, 318, "scores of this step (causal: only this row is new)", size=11)
    for j in range(max_len):
        fill = _shade(Q, 0.3) if j <= n else MASK
        s.rect(x0 + 40 + j * c, 330, c, 24, fill=fill, stroke=GRID, rx=0)
        s.text(x0 + 40 + j * c + c / 2, 347, "s" if j <= n else "", size=10)
    s.text(x0 + 40 + max_len * c / 2, 378, "cost per step: one position, not the whole sequence", size=11,
           italic=True)
    return s.save("ch03_kv_cache.svg")


def training_loop() -> Path:
    s = Svg(900, 470, "The training loop",
            "For every epoch and every batch: set the learning rate from the schedule, forward pass, "
            "cross-entropy loss, backward pass, clip the gradient norm, AdamW step with weight decay on matrices "
            "only, zero the gradients. After every epoch: evaluate the training and validation loss without "
            "dropout and without gradients, record them, and print a sample.")
    s.rect(20, 20, 860, 430, fill="white", dash="7,4")
    s.text(36, 44, "for epoch in 1 … E:", size=14, weight="bold", anchor="start")
    s.rect(50, 60, 800, 230, fill="#fafafa")
    s.text(66, 84, "model.train()   for inputs, targets in train_loader:   (one optimizer step)", size=13,
           weight="bold", anchor="start")
    steps = [("lr ← schedule(step)", "warm-up, then cosine", "#f2f2f2"),
             ("logits = model(inputs)", "(B, T, vocab), dropout on", PALE[Q]),
             ("loss = CE(logits, targets)", "mean −log p(next token)", PALE[Q]),
             ("loss.backward()", "gradients of every weight", PALE[K]),
             ("clip_grad_norm_(…, 1.0)", "cap the global norm", PALE[K]),
             ("AdamW step", "decay on matrices only", PALE[V]),
             ("zero_grad()", "step += 1", "#f2f2f2")]
    w, hgt, gap = 180, 50, 16
    pos = []
    for i, (label, sub, fill) in enumerate(steps):
        row, col = divmod(i, 4)
        x = 70 + col * (w + gap) if row == 0 else 70 + (3 - col) * (w + gap)
        y = 104 if row == 0 else 212
        pos.append((x, y))
        s.box(x, y, w, hgt, label, fill=fill, sub=sub, size=12)
    for i in range(len(steps) - 1):
        (x1, y1), (x2, y2) = pos[i], pos[i + 1]
        if y1 == y2:
            if x2 > x1:
                s.line(x1 + w, y1 + hgt / 2, x2, y2 + hgt / 2)
            else:
                s.line(x1, y1 + hgt / 2, x2 + w, y2 + hgt / 2)
        else:
            s.line(x1 + w / 2, y1 + hgt, x2 + w / 2, y2)
    # back to the next batch
    xl, yl = pos[-1]
    s.path(f"M {xl} {yl + hgt / 2} L 58 {yl + hgt / 2} L 58 {104 + hgt / 2} L 70 {104 + hgt / 2}")
    s.text(64, 196, "next", size=10, anchor="start", italic=True)
    s.text(64, 208, "batch", size=10, anchor="start", italic=True)
    # evaluation
    s.line(450, 290, 450, 320)
    s.rect(120, 320, 660, 90, fill=PALE[OUTC], stroke=OUTC)
    s.text(450, 346, "after the epoch: evaluate", weight="bold", size=14)
    s.text(450, 368, "model.eval(); with torch.no_grad(): train loss and val loss over their loaders", size=12)
    s.text(450, 388, "record them in the history; print a greedy sample (the callback); checkpoint if wanted",
           size=12)
    s.path("M 780 365 L 868 365 L 868 32 L 240 32", dash="5,4")
    s.text(874, 200, "next epoch", size=11, italic=True, anchor="start")
    s.parts[-1] = s.parts[-1].replace("<text ", '<text transform="rotate(90 874 200)" ', 1)
    return s.save("ch03_training_loop.svg")


FIGURES = [qkv_scores, heads, gpt_block, gpt_model, kv_cache, training_loop]

if __name__ == "__main__":
    for draw in FIGURES:
        print("wrote", draw().relative_to(REPO))
