"""Draw the conceptual diagrams of chapter 6 (parameter-efficient fine-tuning) as plain SVG under book/figures/.

    python scripts/figures/ch06.py            # (re)writes book/figures/ch06_*.svg

Hand-placed shapes, no plotting library, no external fonts or images: each file renders offline.
"""

from html import escape
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "book" / "figures"
SANS = "DejaVu Sans, Helvetica, Arial, sans-serif"
INK, GREY, GREY_LINE = "#111827", "#e5e7eb", "#6b7280"
BLUE, BLUE_LINE = "#dbeafe", "#1d4ed8"  # LoRA
GREEN, GREEN_LINE = "#dcfce7", "#15803d"  # adapters
AMBER, AMBER_LINE = "#fef3c7", "#b45309"  # prompts
PINK, PINK_LINE = "#fce7f3", "#be185d"  # prefixes
HEAD, HEAD_LINE = "#ede9fe", "#6d28d9"  # the new head


class Drawing:
    """A list of SVG elements with the few shapes these figures need."""

    def __init__(self, width: int, height: int, title: str):
        self.width, self.height, self.title, self.parts = width, height, title, []

    def label(self, x, y, s, size=12, anchor="middle", bold=False, color=INK, italic=False):
        self.parts.append(f'<text x="{x}" y="{y}" font-family="{SANS}" font-size="{size}" text-anchor="{anchor}"'
                          f'{" font-weight=" + chr(34) + "bold" + chr(34) if bold else ""}'
                          f'{" font-style=" + chr(34) + "italic" + chr(34) if italic else ""}'
                          f' fill="{color}">{escape(s)}</text>')

    def rect(self, x, y, w, h, fill, line, text="", size=12, dashed=False):
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        self.parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="{line}" '
                          f'stroke-width="1.5"{dash}/>')
        rows = text.split("\n") if text else []
        for i, row in enumerate(rows):
            self.label(x + w / 2, y + h / 2 + 4 + (i - (len(rows) - 1) / 2) * 15, row, size)

    def line(self, x1, y1, x2, y2, arrow=True, color=INK):
        head = ' marker-end="url(#head)"' if arrow else ""
        self.parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="1.6"{head}/>')

    def svg(self) -> str:
        defs = ('<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
                f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{INK}"/></marker></defs>')
        body = "\n  ".join([defs, f'<rect width="{self.width}" height="{self.height}" fill="#ffffff"/>'] + self.parts)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} {self.height}" '
                f'width="{self.width}" height="{self.height}" role="img">\n  <title>{escape(self.title)}</title>\n'
                f"  {body}\n</svg>\n")


def lora() -> Drawing:
    d = Drawing(640, 380, "A LoRA layer: frozen W plus the scaled low-rank update B A")
    d.label(320, 26, "LoRA:  y = x Wᵀ + b  +  (α / r) · x Aᵀ Bᵀ", 15, bold=True)
    d.rect(250, 330, 140, 32, "#f9fafb", GREY_LINE, "x   (…, in)")
    d.line(320, 330, 180, 272); d.line(320, 330, 470, 300)
    d.rect(80, 150, 200, 120, GREY, GREY_LINE, "W   (out × in)\nfrozen\n+ bias b", 13)
    d.rect(400, 250, 140, 48, BLUE, BLUE_LINE, "A   (r × in)\nrandom at start", 12)
    d.line(470, 250, 470, 218)
    d.label(560, 238, "r numbers", 11, anchor="start", color=GREY_LINE, italic=True)
    d.rect(400, 170, 140, 48, BLUE, BLUE_LINE, "B   (out × r)\nzero at start", 12)
    d.line(470, 170, 470, 138)
    d.rect(420, 104, 100, 32, "#ffffff", BLUE_LINE, "× α / r", 12)
    d.parts.append(f'<circle cx="320" cy="80" r="14" fill="#ffffff" stroke="{INK}" stroke-width="1.6"/>')
    d.label(320, 85, "+", 16, bold=True)
    d.line(180, 150, 307, 86); d.line(470, 104, 333, 86)
    d.line(320, 66, 320, 44)
    d.label(335, 56, "y   (…, out)", 12, anchor="start")
    d.label(180, 300, "in × out parameters, not trained", 11, color=GREY_LINE)
    d.label(470, 330, "r (in + out) parameters, trained", 11, color=BLUE_LINE)
    d.label(320, 372, "after training: W ← W + (α / r) B A  (merge), then a plain Linear again", 11, color=INK)
    return d


def where() -> Drawing:
    d = Drawing(780, 520, "Where each parameter-efficient method puts its trained parameters in a GPT block")
    d.label(610, 40, "one GPT block (pre-LN), frozen", 15, bold=True)
    # input row: virtual tokens + real tokens
    d.rect(70, 462, 120, 34, AMBER, AMBER_LINE, "P virtual tokens", 11)
    d.rect(200, 462, 230, 34, "#f9fafb", GREY_LINE, "token + position embeddings", 11)
    d.line(250, 462, 250, 432)
    # attention sub-layer
    d.rect(60, 250, 380, 180, "#ffffff", GREY_LINE, dashed=True)
    d.label(80, 270, "attention sub-layer", 12, anchor="start", bold=True)
    d.rect(170, 392, 160, 28, GREY, GREY_LINE, "LayerNorm", 11)
    d.line(250, 392, 250, 372)
    d.rect(170, 344, 160, 28, GREY, GREY_LINE, "qkv  Linear", 11)
    d.rect(340, 344, 60, 28, BLUE, BLUE_LINE, "+ B A", 11)
    d.rect(80, 300, 80, 30, PINK, PINK_LINE, "prefix K, V", 11)
    d.line(160, 315, 190, 315)
    d.rect(190, 300, 120, 30, GREY, GREY_LINE, "attention", 11)
    d.line(250, 344, 250, 330)
    d.line(250, 300, 250, 290)
    d.rect(170, 262, 160, 28, GREY, GREY_LINE, "proj  Linear", 11)
    d.rect(340, 262, 60, 28, BLUE, BLUE_LINE, "+ B A", 11)
    d.line(250, 262, 250, 244)
    d.rect(170, 214, 160, 28, GREEN, GREEN_LINE, "adapter (d → m → d)", 11)
    d.parts.append(f'<circle cx="250" cy="196" r="10" fill="#ffffff" stroke="{INK}" stroke-width="1.6"/>')
    d.label(250, 201, "+", 14, bold=True)
    d.line(250, 214, 250, 208)
    d.line(52, 446, 52, 196, arrow=False); d.line(52, 196, 238, 196)
    d.label(46, 330, "residual", 10, anchor="end", color=GREY_LINE)
    # feed-forward sub-layer
    d.rect(60, 50, 380, 136, "#ffffff", GREY_LINE, dashed=True)
    d.label(80, 70, "feed-forward sub-layer", 12, anchor="start", bold=True)
    d.line(250, 186, 250, 176)
    d.rect(170, 148, 160, 28, GREY, GREY_LINE, "LayerNorm → fc  Linear", 11)
    d.rect(340, 148, 60, 28, BLUE, BLUE_LINE, "+ B A", 11)
    d.line(250, 148, 250, 136)
    d.rect(170, 108, 160, 28, GREY, GREY_LINE, "GELU → proj  Linear", 11)
    d.rect(340, 108, 60, 28, BLUE, BLUE_LINE, "+ B A", 11)
    d.line(250, 108, 250, 100)
    d.rect(170, 76, 160, 24, GREEN, GREEN_LINE, "adapter", 11)
    d.line(250, 76, 250, 46)
    d.parts.append(f'<circle cx="250" cy="36" r="10" fill="#ffffff" stroke="{INK}" stroke-width="1.6"/>')
    d.label(250, 41, "+", 14, bold=True)
    d.line(260, 196, 448, 196, arrow=False); d.line(448, 196, 448, 36, arrow=False); d.line(448, 36, 262, 36)
    d.line(250, 26, 250, 8)
    d.label(262, 16, "next block … final LayerNorm → new 2-class head (last token)", 11, anchor="start")
    d.line(70, 446, 52, 446, arrow=False)
    # legend
    x = 480
    d.label(x, 80, "trained (coloured), everything grey frozen:", 12, anchor="start", bold=True)
    legend = [(BLUE, BLUE_LINE, "LoRA", "low-rank B A beside chosen Linear layers;", "merged into W for inference"),
              (GREEN, GREEN_LINE, "adapters", "bottleneck after attention and after the", "feed-forward output, before the +"),
              (AMBER, AMBER_LINE, "prompt / P-tuning", "P vectors in front of the embeddings", "(P-tuning: made by a prompt encoder)"),
              (PINK, PINK_LINE, "prefix tuning", "P keys and values in every layer's", "KV cache, before the real tokens"),
              (HEAD, HEAD_LINE, "new head", "d_model → 2 classes, read at the last", "real token (trained by every method)")]
    for i, (fill, line, name, a, b) in enumerate(legend):
        y = 104 + i * 70
        d.rect(x, y, 26, 20, fill, line)
        d.label(x + 36, y + 15, name, 12, anchor="start", bold=True)
        d.label(x + 36, y + 33, a, 11, anchor="start")
        d.label(x + 36, y + 48, b, 11, anchor="start")
    d.label(x, 470, "padding mask: P ones in front of the real", 11, anchor="start", color=AMBER_LINE)
    d.label(x, 486, "tokens' mask (virtual tokens are never padding)", 11, anchor="start", color=AMBER_LINE)
    return d


if __name__ == "__main__":
    for name, drawing in (("ch06_lora.svg", lora()), ("ch06_where.svg", where())):
        (OUT / name).write_text(drawing.svg(), encoding="utf-8")
        print("wrote", OUT / name)
