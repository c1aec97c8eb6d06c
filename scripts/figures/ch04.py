"""Draw the conceptual diagrams of chapter 4 (BERT) as plain SVG files under book/figures/.

    python scripts/figures/ch04.py            # (re)writes book/figures/ch04_*.svg

Hand-placed shapes, no plotting library, no external fonts or images: each file renders offline.
"""

from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "book" / "figures"

FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'
MONO = 'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace"'
INK = "#111827"
def svg(w, h, title, body):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">\n'
            f'  <title>{title}</title>\n'
            '  <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{INK}"/></marker></defs>\n'
            f'  <rect width="{w}" height="{h}" fill="#ffffff"/>\n' + "\n".join("  " + b for b in body) + "\n</svg>\n")
def text(x, y, s, size=13, anchor="middle", bold=False, mono=False, fill=INK):
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (f'<text x="{x}" y="{y}" {MONO if mono else FONT} font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{"bold" if bold else "normal"}" fill="{fill}" xml:space="preserve">{s}</text>')
def box(x, y, w, h, label, fill="#f3f4f6", stroke="#4b5563", size=12, mono=False):
    out = [f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>']
    lines = label.split("\n")
    for i, l in enumerate(lines):
        out.append(text(x + w / 2, y + h / 2 + 4 + (i - (len(lines) - 1) / 2) * 15, l, size, mono=mono))
    return out
def arrow(x1, y1, x2, y2, color=INK):
    return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="1.6" marker-end="url(#arrow)"/>'
def grid(x, y, n, cell, allowed, color="#1d4ed8"):
    out = []
    for i in range(n):
        for j in range(n):
            f = color if allowed(i, j) else "#f3f4f6"
            out.append(f'<rect x="{x + j * cell}" y="{y + i * cell}" width="{cell - 1}" height="{cell - 1}" fill="{f}"/>')
    return out

# 1. BERT vs GPT
b = []
for cx, title, sub in ((190, "GPT (chapter 3)", "decoder: reads left to right"), (570, "BERT (this chapter)", "encoder: reads both ways")):
    b.append(text(cx, 28, title, 16, bold=True))
    b.append(text(cx, 48, sub, 12))
b += box(80, 380, 220, 34, "token + position embeddings", "#e0e7ff", "#4338ca")
b += box(440, 380, 260, 34, "word + position + token-type emb.\n→ LayerNorm", "#e0e7ff", "#4338ca", size=11)
b.append(arrow(190, 380, 190, 352)); b.append(arrow(570, 380, 570, 352))
b += box(80, 240, 220, 110, "", "#ffffff", "#9ca3af")
b += box(440, 240, 260, 110, "", "#ffffff", "#9ca3af")
b.append(text(190, 258, "× n_layers, pre-LN", 12, bold=True)); b.append(text(570, 258, "× num_hidden_layers, post-LN", 12, bold=True))
b.append(text(150, 290, "x + attn(LN(x))", 12, mono=True)); b.append(text(150, 312, "x + ff(LN(x))", 12, mono=True))
b.append(text(510, 290, "LN(x + attn(x))", 12, mono=True)); b.append(text(510, 312, "LN(x + ff(x))", 12, mono=True))
b += grid(228, 268, 8, 8, lambda i, j: j <= i)
b += grid(630, 268, 8, 8, lambda i, j: j < 6)
b.append(text(260, 344, "causal mask", 10)); b.append(text(662, 344, "padding mask", 10))
b.append(arrow(190, 240, 190, 200)); b.append(arrow(500, 240, 500, 200)); b.append(arrow(640, 240, 640, 200))
b += box(80, 150, 220, 48, "final LayerNorm → LM head\n(next token at every position)", "#dcfce7", "#15803d", size=11)
b += box(440, 150, 120, 48, "MLM head\n(masked positions)", "#dcfce7", "#15803d", size=11)
b += box(580, 150, 120, 48, "[CLS] → pooler\n→ classifier", "#fef3c7", "#b45309", size=11)
b.append(text(190, 450, "input: tokens so far", 12)); b.append(text(570, 450, "input: [CLS] sentence A [SEP] sentence B [SEP]", 12))
b.append(text(380, 100, "same attention and feed-forward blocks (chapter 2)", 12, fill="#6b7280"))
open(OUT / "ch04_bert_vs_gpt.svg", "w", encoding="utf-8").write(svg(760, 470, "GPT and BERT side by side", b))

# 2. WordPiece greedy longest match
b = [text(380, 28, 'greedy longest-match-first on "unaffable"', 15, bold=True)]
word = "unaffable"
steps = [("una", 0, 3, "longest prefix in the vocabulary"), ("##ffa", 3, 6, "longest ## piece of \"ffable\""), ("##ble", 6, 9, "longest ## piece of \"ble\"")]
cw = 40
x0 = 40
for i, ch in enumerate(word):
    b += box(x0 + i * cw, 50, cw - 4, 34, ch, "#f3f4f6", "#6b7280", size=15, mono=True)
colors = [("#dbeafe", "#1d4ed8"), ("#dcfce7", "#15803d"), ("#fef3c7", "#b45309")]
for k, (piece, s, e, why) in enumerate(steps):
    y = 110 + k * 52
    f, st = colors[k]
    b.append(f'<rect x="{x0 + s * cw}" y="{y}" width="{(e - s) * cw - 4}" height="34" rx="6" fill="{f}" stroke="{st}" stroke-width="1.5"/>')
    b.append(text(x0 + (s + e) / 2 * cw - 2, y + 22, piece, 14, mono=True))
    b.append(text(x0 + 9 * cw + 20, y + 22, f"step {k + 1}: {why}", 12, anchor="start"))
b.append(text(380, 285, 'vocabulary: {un, una, ##aff, ##able, ##ffa, ##ble, ...}   result: [una, ##ffa, ##ble]', 12, mono=True))
b.append(text(380, 308, 'if some rest had no piece at all, the whole word would become [UNK]', 12, fill="#6b7280"))
open(OUT / "ch04_wordpiece.svg", "w", encoding="utf-8").write(svg(760, 325, "WordPiece greedy longest match", b))

# 3. MLM masking
b = [text(380, 26, "BERT's masking: pick 15%, then 80 / 10 / 10", 15, bold=True)]
toks = ["[CLS]", "the", "acting", "was", "great", "but", "the", "plot", "was", "weak", "[SEP]"]
picked = {2: "[MASK]", 4: "movie", 9: "weak"}
kinds = {2: ("#dbeafe", "#1d4ed8"), 4: ("#fee2e2", "#b91c1c"), 9: ("#dcfce7", "#15803d")}
w = 62
x0 = 40
b.append(text(20, 78, "text", 12, anchor="start"))
b.append(text(20, 148, "input", 12, anchor="start"))
b.append(text(20, 218, "label", 12, anchor="start"))
for i, t in enumerate(toks):
    x = x0 + 30 + i * w
    special = t.startswith("[")
    b += box(x, 58, w - 6, 30, t, "#e5e7eb" if special else "#f9fafb", "#9ca3af", size=11, mono=True)
    if i in picked:
        f, st = kinds[i]
        b.append(arrow(x + (w - 6) / 2, 90, x + (w - 6) / 2, 126))
        b += box(x, 128, w - 6, 30, picked[i], f, st, size=11, mono=True)
        b += box(x, 198, w - 6, 30, t, "#fef9c3", "#a16207", size=11, mono=True)
    else:
        b += box(x, 128, w - 6, 30, t, "#f9fafb", "#d1d5db", size=11, mono=True)
        b.append(text(x + (w - 6) / 2, 218, "-100", 11, mono=True, fill="#9ca3af"))
b.append(text(380, 262, "picked: 15% of ordinary tokens ([CLS], [SEP], padding never)", 12))
lx = 90
for (f, st), s in zip([kinds[2], kinds[4], kinds[9]], ["80%: [MASK]", "10%: a random ordinary token", "10%: unchanged"]):
    b.append(f'<rect x="{lx}" y="276" width="16" height="16" fill="{f}" stroke="{st}"/>')
    b.append(text(lx + 22, 289, s, 12, anchor="start"))
    lx += 220
b.append(text(380, 318, "the loss is the cross-entropy at the picked positions only (label -100 elsewhere)", 12, fill="#6b7280"))
open(OUT / "ch04_mlm_masking.svg", "w", encoding="utf-8").write(svg(760, 335, "Masked language modelling inputs and labels", b))

# 4. fine-tuning
b = [text(380, 26, "fine-tuning: a classifier on the [CLS] vector", 15, bold=True)]
toks = ["[CLS]", "a", "great", "film", "!", "[SEP]", "[PAD]"]
for i, t in enumerate(toks):
    x = 120 + i * 75
    b += box(x, 250, 66, 30, t, "#e5e7eb" if t.startswith("[") else "#f9fafb", "#9ca3af", size=11, mono=True)
    b.append(arrow(x + 33, 250, x + 33, 214))
b += box(110, 150, 530, 62, "pretrained BERT encoder (MLM head removed)\nevery position attends to every real token", "#e0e7ff", "#4338ca")
b.append(arrow(153, 150, 153, 112))
b += box(95, 70, 116, 40, "pooler:\ntanh(W h_CLS)", "#fef3c7", "#b45309", size=11)
b.append(arrow(211, 90, 290, 90))
b += box(290, 70, 140, 40, "dropout → Linear\n(hidden → classes)", "#fef3c7", "#b45309", size=11)
b.append(arrow(430, 90, 500, 90))
b += box(500, 70, 180, 40, "logits → cross-entropy\nwith the label", "#dcfce7", "#15803d", size=11)
b.append(text(380, 305, "all weights are trained; the pooler and the classifier start from random values", 12, fill="#6b7280"))
open(OUT / "ch04_finetune.svg", "w", encoding="utf-8").write(svg(760, 320, "Fine-tuning BERT for classification", b))
print("ok")
