"""Procedural manga pages, one visual style per Manga109 genre, for the demo model.

The demo model is trained on data the project generates itself, so every genre here must
carry cues that a small CNN can pick up at low resolution (64-96 px after a resize and a
centre crop of the short side). Two kinds of cue are used together:

* page-level structure that survives heavy downsampling: the panel layout (four equal
  stacked frames, slanted cuts, tall columns, a splash panel, letterbox strips ...), the
  gutter colour and the overall ink density;
* panel-level texture and motifs drawn all over the page (speed lines, drips, screentone,
  hearts, grids, brush strokes, stars, sweat drops, animal blobs ...), never only at the
  page edges, because a centre crop of a tall page keeps only its middle square.

Everything random comes from the caller's ``np.random.Generator`` so a page is a pure
function of (genre, generator state, size). Rendering is PIL vector drawing plus a little
numpy for screentone and noise; a 320x448 page takes a few milliseconds.

``render_page_with_layout`` also returns the boxes it drew (frames, speech bubbles, faces,
bodies) so the Manga109 writer can emit annotations that match the pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from runtime.labels import GENRES

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "PageLayout",
    "render_page",
    "render_page_with_layout",
]

DEFAULT_PAGE_SIZE: tuple[int, int] = (320, 448)

Box = tuple[int, int, int, int]  # xmin, ymin, xmax, ymax (inclusive-exclusive pixel box)
Point = tuple[float, float]


@dataclass
class PageLayout:
    """What was drawn on a page, in page pixel coordinates.

    ``faces`` and ``bodies`` carry a character slot (0..n_characters-1); the Manga109
    writer maps slots to the book's character ids.
    """

    genre: str
    width: int
    height: int
    frames: list[Box] = field(default_factory=list)
    texts: list[tuple[Box, str]] = field(default_factory=list)
    faces: list[tuple[Box, int]] = field(default_factory=list)
    bodies: list[tuple[Box, int]] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Geometry: panels are convex polygons produced by cutting the page with straight lines.
# --------------------------------------------------------------------------------------


def _clip_halfplane(poly: list[Point], a: float, b: float, c: float) -> list[Point]:
    """Keep the part of a convex polygon where a*x + b*y <= c (Sutherland-Hodgman)."""
    out: list[Point] = []
    n = len(poly)
    for i in range(n):
        p, q = poly[i], poly[(i + 1) % n]
        fp = a * p[0] + b * p[1] - c
        fq = a * q[0] + b * q[1] - c
        if fp <= 0:
            out.append(p)
        if (fp < 0 < fq) or (fq < 0 < fp):
            t = fp / (fp - fq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _cut(poly: list[Point], p0: Point, p1: Point, gutter: float) -> tuple[list[Point], list[Point]]:
    """Split a convex polygon along the line p0->p1, leaving a gutter of the given width."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    norm = math.hypot(dx, dy) or 1.0
    a, b = -dy / norm, dx / norm  # unit normal
    c = a * p0[0] + b * p0[1]
    first = _clip_halfplane(poly, a, b, c - gutter / 2)
    second = _clip_halfplane(poly, -a, -b, -(c + gutter / 2))
    return first, second


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _bbox(poly: list[Point]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in poly]
    ys = [p[1] for p in poly]
    return min(xs), min(ys), max(xs), max(ys)


def _fractions(rng: np.random.Generator, n: int, jitter: float) -> np.ndarray:
    """Cumulative cut positions in (0, 1) for n roughly equal parts."""
    w = 1.0 + jitter * rng.uniform(-1.0, 1.0, size=n)
    return np.cumsum(w / w.sum())[:-1]


def _hcuts(poly: list[Point], fracs, gutter: float, slant: Callable[[], float] | None = None) -> list[list[Point]]:
    """Cut a polygon into horizontal bands at the given height fractions of its bbox."""
    x0, y0, x1, y1 = _bbox(poly)
    bands, rest = [], poly
    usable = (y1 - y0) - len(fracs) * gutter  # fractions share out the space net of gutters
    for i, f in enumerate(fracs):
        y = y0 + f * usable + (i + 0.5) * gutter
        d = slant() if slant else 0.0
        top, rest = _cut(rest, (x0 - 50, y + d), (x1 + 50, y - d), gutter)  # left->right: first = above
        bands.append(top)
    bands.append(rest)
    return [b for b in bands if len(b) >= 3]


def _vcuts(poly: list[Point], fracs, gutter: float, slant: Callable[[], float] | None = None) -> list[list[Point]]:
    """Cut a polygon into vertical strips at the given width fractions of its bbox."""
    x0, y0, x1, y1 = _bbox(poly)
    strips, rest = [], poly
    usable = (x1 - x0) - len(fracs) * gutter
    for i, f in enumerate(fracs):
        x = x0 + f * usable + (i + 0.5) * gutter
        d = slant() if slant else 0.0
        left, rest = _cut(rest, (x + d, y1 + 50), (x - d, y0 - 50), gutter)  # upwards: first = left
        strips.append(left)
    strips.append(rest)
    return [s for s in strips if len(s) >= 3]


# --------------------------------------------------------------------------------------
# Texture helpers (numpy), returned as uint8 arrays of the panel's size.
# --------------------------------------------------------------------------------------


def _dot_tone(w: int, h: int, period: float, radius, bg: int = 255, ink: int = 0, angle: float = 0.785) -> np.ndarray:
    """Classic screentone: a rotated lattice of dots; radius may be an (h, w) array (gradient)."""
    xx = np.arange(w, dtype=np.float32)[None, :] / np.float32(period)
    yy = np.arange(h, dtype=np.float32)[:, None] / np.float32(period)
    ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    # Lattice coordinates in units of the period; x - floor(x) is a much faster wrap than %.
    u = xx * ca + yy * sa
    u -= np.floor(u) + np.float32(0.5)
    v = yy * ca - xx * sa
    v -= np.floor(v) + np.float32(0.5)
    dots = (u * u + v * v) * np.float32(period * period) < np.square(radius)
    out = np.full((h, w), bg, np.uint8)
    out[dots] = ink
    return out


def _vgradient(w: int, h: int, top: float, bottom: float) -> np.ndarray:
    col = np.linspace(top, bottom, h, dtype=np.float32)[:, None]
    return np.broadcast_to(col, (h, w)).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Motifs shared by several genres.
# --------------------------------------------------------------------------------------

_KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
_KATA = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン"
_PHRASES = (
    "なんだと", "まさか", "ちょっと待って", "いくぞ", "ありがとう", "どうして", "こわい",
    "すごい", "やった", "だめだ", "ほんとうに", "おはよう", "また明日", "行こう", "うそ",
    "ドドド", "ゴゴゴ", "ザッ", "バン", "キラキラ", "ドキドキ", "ワン", "ニャー",
)


def _japanese_line(rng: np.random.Generator) -> str:
    """A short Japanese-looking line: a stock phrase or random kana, with punctuation."""
    if rng.random() < 0.6:
        s = _PHRASES[int(rng.integers(len(_PHRASES)))]
    else:
        alphabet = _KANA if rng.random() < 0.7 else _KATA
        s = "".join(alphabet[int(i)] for i in rng.integers(len(alphabet), size=int(rng.integers(2, 7))))
    return s + ("！", "？", "…", "。", "！？", "")[int(rng.integers(6))]


def _star_points(cx: float, cy: float, r_out: float, r_in: float, n: int, rot: float = 0.0, rng=None, jag: float = 0.0) -> list[Point]:
    pts = []
    for i in range(2 * n):
        r = r_out if i % 2 == 0 else r_in
        if rng is not None and jag and i % 2 == 0:
            r *= 1.0 + jag * rng.uniform(-1, 1)
        a = rot + math.pi * i / n
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _heart(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, fill, outline, width: int) -> None:
    """A heart from two circles and a triangle (cheap and reads as a heart when small)."""
    r = s * 0.3
    d.polygon([(cx - 2 * r, cy - r * 0.2), (cx + 2 * r, cy - r * 0.2), (cx, cy + 2.1 * r)], fill=fill, outline=None)
    d.ellipse([cx - 2 * r, cy - 1.5 * r, cx, cy + 0.5 * r], fill=fill, outline=None)
    d.ellipse([cx, cy - 1.5 * r, cx + 2 * r, cy + 0.5 * r], fill=fill, outline=None)
    if outline is not None:
        d.arc([cx - 2 * r, cy - 1.5 * r, cx, cy + 0.5 * r], 140, 360, fill=outline, width=width)
        d.arc([cx, cy - 1.5 * r, cx + 2 * r, cy + 0.5 * r], 180, 40, fill=outline, width=width)
        d.line([(cx - 1.85 * r, cy + 0.05 * r), (cx, cy + 2.1 * r), (cx + 1.85 * r, cy + 0.05 * r)], fill=outline, width=width)


def _drop(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, fill, outline, width: int) -> None:
    """A sweat/water drop: a circle with a pointed top."""
    r = s * 0.5
    d.polygon([(cx, cy - 2.2 * r), (cx - r * 0.95, cy - r * 0.3), (cx + r * 0.95, cy - r * 0.3)], fill=fill, outline=outline)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    d.polygon([(cx, cy - 2.0 * r), (cx - r * 0.8, cy - r * 0.3), (cx + r * 0.8, cy - r * 0.3)], fill=fill)


@dataclass
class _Panel:
    """Drawing context for one panel: a local canvas plus the annotations made on it."""

    img: Image.Image
    draw: ImageDraw.ImageDraw
    w: int
    h: int
    s: float  # pixel scale relative to a 320 px wide page
    rng: np.random.Generator
    genre: str
    n_characters: int
    texts: list = field(default_factory=list)
    faces: list = field(default_factory=list)
    bodies: list = field(default_factory=list)

    def lw(self, base: float) -> int:
        return max(1, int(round(base * self.s)))

    def figure(self, cx: float, cy: float, r: float, ink: int = 0, paper: int = 255, animal: bool = False) -> None:
        """A simple character (head + torso, or an animal) and its face/body boxes."""
        d, rng, w = self.draw, self.rng, self.lw(1.5)
        slot = int(rng.integers(self.n_characters))
        if animal:
            # Horizontal blob body, round head with ears at one end, a tail at the other.
            side = 1 if rng.random() < 0.5 else -1
            bw, bh = r * rng.uniform(2.4, 3.4), r * rng.uniform(1.3, 1.8)
            bx0, by0 = cx - bw / 2, cy
            d.ellipse([bx0, by0, bx0 + bw, by0 + bh], fill=int(rng.integers(150, 230)), outline=ink, width=w)
            for k in range(4):  # legs
                lx = bx0 + bw * (0.2 + 0.2 * k)
                d.rectangle([lx - r * 0.12, by0 + bh * 0.8, lx + r * 0.12, by0 + bh * 1.15], fill=ink)
            hx, hy = cx + side * bw * 0.45, cy - r * 0.2
            tail_x = cx - side * bw * 0.5
            d.line([(tail_x, cy + bh * 0.3), (tail_x - side * r * 0.8, cy - r * 0.5)], fill=ink, width=self.lw(2.5))
            round_ears = rng.random() < 0.4
            for ex in (-0.6, 0.6):
                if round_ears:
                    d.ellipse([hx + ex * r - r * 0.35, hy - r * 1.25, hx + ex * r + r * 0.35, hy - r * 0.55], fill=paper, outline=ink, width=w)
                else:
                    d.polygon([(hx + ex * r - r * 0.35, hy - r * 0.6), (hx + ex * r * 1.1, hy - r * 1.6), (hx + ex * r + r * 0.35, hy - r * 0.6)], fill=paper, outline=ink)
            d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=paper, outline=ink, width=w)
            for ex in (-0.35, 0.35):
                d.ellipse([hx + ex * r - r * 0.12, hy - r * 0.2, hx + ex * r + r * 0.12, hy + r * 0.1], fill=ink)
            d.ellipse([hx - r * 0.15, hy + r * 0.2, hx + r * 0.15, hy + r * 0.4], fill=ink)  # nose
            self.faces.append(((hx - r, hy - r * 1.6, hx + r, hy + r), slot))
            self.bodies.append(((min(bx0, hx - r, tail_x - r), hy - r * 1.6, max(bx0 + bw, hx + r, tail_x + r), by0 + bh * 1.15), slot))
            return
        # Torso first so the head overlaps it.
        tw = r * rng.uniform(1.4, 2.2)
        th = r * rng.uniform(2.0, 3.2)
        top = cy + r * 0.9
        d.polygon([(cx - tw * 0.45, top), (cx + tw * 0.45, top), (cx + tw * 0.6, top + th), (cx - tw * 0.6, top + th)], fill=paper, outline=ink)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=paper, outline=ink, width=w)
        # Hair: a dark cap; eyes: two dots (big glossy ones for romance styles).
        d.chord([cx - r, cy - r, cx + r, cy + r * 0.6], 180, 360, fill=min(ink + 40, 255) if paper > ink else 200)
        big_eyes = self.genre in ("love romance", "romantic comedy")
        er = r * (0.22 if big_eyes else 0.1)
        for ex in (-0.38, 0.38):
            d.ellipse([cx + ex * r - er, cy + r * 0.05, cx + ex * r + er, cy + r * 0.05 + 2 * er], fill=ink)
            if big_eyes:
                d.ellipse([cx + ex * r - er * 0.4, cy + r * 0.1, cx + ex * r, cy + r * 0.1 + er * 0.8], fill=paper)
        self.faces.append(((cx - r, cy - r, cx + r, cy + r), slot))
        self.bodies.append(((cx - tw * 0.6, cy - r, cx + tw * 0.6, top + th), slot))

    def bubble(self, cx: float, cy: float, rx: float, ry: float, spiky: bool = False, ink: int = 0, paper: int = 255) -> None:
        """A speech balloon with vertical 'text' strokes, recorded as a <text> box."""
        d, rng = self.draw, self.rng
        if spiky:
            pts = _star_points(cx, cy, 1.0, 0.75, int(rng.integers(10, 16)), rot=rng.uniform(0, 6.3), rng=rng, jag=0.15)
            pts = [(cx + (x - cx) * rx, cy + (y - cy) * ry) for x, y in pts]
            d.polygon(pts, fill=paper, outline=ink)
        else:
            tx = cx + rng.uniform(-0.5, 0.5) * rx
            d.polygon([(tx - rx * 0.15, cy + ry * 0.8), (tx + rx * 0.15, cy + ry * 0.8), (tx + rng.uniform(-0.6, 0.6) * rx, cy + ry * 1.45)], fill=paper, outline=ink)
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=paper, outline=ink, width=self.lw(1.2))
        # Japanese is set vertically, right to left: a few short columns of ink.
        ncol = int(rng.integers(1, 4))
        step = rx * 0.35
        for k in range(ncol):
            x = cx + (ncol - 1) * step / 2 - k * step
            L = ry * rng.uniform(0.6, 1.1)
            d.line([(x, cy - L / 2), (x, cy + L / 2)], fill=ink, width=self.lw(1.3))
        self.texts.append(((cx - rx, cy - ry, cx + rx, cy + ry), _japanese_line(rng)))

    def extras(self, p_fig: float = 0.6, p_bub: float = 0.6, ink: int = 0, paper: int = 255, spiky: bool = False, animal: bool = False) -> None:
        """The genre-neutral part of a panel: maybe a character, maybe a balloon."""
        rng, w, h = self.rng, self.w, self.h
        m = min(w, h)
        if rng.random() < p_fig and m > 30 * self.s:
            r = m * rng.uniform(0.1, 0.2)
            self.figure(rng.uniform(0.25, 0.75) * w, rng.uniform(0.2, 0.55) * h, r, ink=ink, paper=paper, animal=animal)
        if rng.random() < p_bub and m > 24 * self.s:
            rx = max(m * rng.uniform(0.12, 0.22), 6 * self.s)
            self.bubble(rng.uniform(rx, max(rx + 1, w - rx)), rng.uniform(rx, max(rx + 1, h * 0.6)), rx, rx * rng.uniform(1.1, 1.6), spiky=spiky, ink=ink, paper=paper)


# --------------------------------------------------------------------------------------
# Genre painters: each paints one panel's background and motifs, then the neutral extras.
# Signature: (panel, index of panel on the page) -> None.
# --------------------------------------------------------------------------------------


def _paint_animal(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    # Grass tufts along a ground line and paw prints scattered: textures unique to animal.
    # The ground is a light grey band under each panel's horizon: a cue that survives
    # heavy downsampling as stripes repeated row after row.
    gy = h * rng.uniform(0.6, 0.75)
    d.rectangle([0, gy, w, h], fill=int(rng.integers(170, 205)))
    d.line([(0, gy), (w, gy)], fill=60, width=p.lw(1.5))
    for x in rng.uniform(0, w, size=int(w / (6 * p.s))):
        L = rng.uniform(3, 9) * p.s
        d.line([(x, gy), (x + rng.uniform(-3, 3) * p.s, gy - L)], fill=40, width=p.lw(1))
    for _ in range(int(rng.integers(2, 6))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 6) * p.s
        d.ellipse([x - r, y - r * 0.8, x + r, y + r * 0.8], fill=30)
        for a in (-0.9, -0.3, 0.3, 0.9):
            d.ellipse([x + 1.4 * r * math.sin(a) - r * 0.35, y - 1.5 * r * math.cos(a) - r * 0.35, x + 1.4 * r * math.sin(a) + r * 0.35, y - 1.5 * r * math.cos(a) + r * 0.35], fill=30)
    m = min(w, h)
    for _ in range(int(rng.integers(1, 3))):
        r = m * rng.uniform(0.1, 0.17)
        p.figure(rng.uniform(0.3, 0.7) * w, rng.uniform(0.25, 0.55) * h, r, animal=True)
    p.extras(p_fig=0.0, p_bub=0.5)


def _paint_battle(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    # Focus (speed) lines converging on an impact point, drawn as thin black wedges.
    fx, fy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    r0 = min(w, h) * rng.uniform(0.1, 0.22)
    R = math.hypot(w, h)
    # Dense enough to darken the page as a whole; fewer, wider wedges keep drawing cheap.
    n = int(rng.integers(55, 80))
    angs = rng.uniform(0, 2 * math.pi, size=n)
    widths = rng.uniform(0.02, 0.07, size=n)
    starts = r0 * rng.uniform(1.0, 1.8, size=n)
    for a, wd, st in zip(angs, widths, starts):
        d.polygon([(fx + st * math.cos(a), fy + st * math.sin(a)), (fx + R * math.cos(a - wd), fy + R * math.sin(a - wd)), (fx + R * math.cos(a + wd), fy + R * math.sin(a + wd))], fill=0)
    # Impact burst at the focus.
    d.polygon(_star_points(fx, fy, r0 * 0.9, r0 * 0.45, int(rng.integers(9, 15)), rot=rng.uniform(0, 6.3), rng=rng, jag=0.3), fill=255, outline=0)
    p.extras(p_fig=0.4, p_bub=0.5, spiky=True)


def _paint_fantasy(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    night = i == 0 or rng.random() < 0.3  # the splash panel is a night sky
    ink = 255 if night else 0
    if night:
        p.img.paste(Image.fromarray(_vgradient(w, h, rng.uniform(20, 60), rng.uniform(90, 140))))
        mx, my, mr = rng.uniform(0.15, 0.85) * w, rng.uniform(0.1, 0.4) * h, min(w, h) * rng.uniform(0.08, 0.15)
        d.ellipse([mx - mr, my - mr, mx + mr, my + mr], fill=235)
        # Castle silhouette on the horizon.
        base = h * rng.uniform(0.75, 0.92)
        x = rng.uniform(-0.1, 0.2) * w
        while x < w:
            tw, th = rng.uniform(0.06, 0.14) * w, rng.uniform(0.08, 0.3) * h
            d.rectangle([x, base - th, x + tw, h], fill=10)
            d.polygon([(x - tw * 0.1, base - th), (x + tw / 2, base - th - tw * 1.2), (x + tw * 1.1, base - th)], fill=10)
            x += tw * rng.uniform(1.0, 1.8)
    # Five-point stars and four-point sparkles, many sizes, everywhere.
    for _ in range(int(rng.integers(8, 18))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 11) * p.s
        d.polygon(_star_points(x, y, r, r * 0.42, 5, rot=rng.uniform(0, 6.3)), fill=ink if rng.random() < 0.5 else 128, outline=0 if not night else None)
    for _ in range(int(rng.integers(8, 18))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 12) * p.s
        d.polygon(_star_points(x, y, r, r * 0.18, 4, rot=0.0), fill=ink)
    p.extras(p_fig=0.4, p_bub=0.3, ink=0, paper=255)


def _paint_four_frame(p: _Panel, i: int) -> None:
    # Yonkoma: plain white frames, a character or two and a balloon; the look is the
    # four equal stacked frames themselves, so the content stays simple and light.
    rng = p.rng
    for _ in range(int(rng.integers(1, 3))):
        p.extras(p_fig=0.8, p_bub=0.0)
    p.extras(p_fig=0.0, p_bub=0.85)


def _paint_historical(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    if rng.random() < 0.85:  # ink-wash backdrop, pale sky to dark ground
        p.img.paste(Image.fromarray(_vgradient(w, h, rng.uniform(225, 250), rng.uniform(80, 130))))
    # Brush strokes: tapered vertical slabs of ink (bamboo, rain, pillars, calligraphy).
    for _ in range(int(rng.integers(5, 12))):
        x = rng.uniform(0, w)
        y0 = rng.uniform(-0.1, 0.5) * h
        L = rng.uniform(0.4, 1.0) * h
        wd = rng.uniform(2, 8) * p.s
        lean = rng.uniform(-0.05, 0.05) * L
        tone = int(rng.integers(0, 90))
        d.polygon([(x - wd / 2, y0), (x + wd / 2, y0), (x + lean + wd * 0.15, y0 + L), (x + lean - wd * 0.15, y0 + L)], fill=tone)
        for ny in np.arange(y0 + rng.uniform(10, 30) * p.s, y0 + L, rng.uniform(18, 40) * p.s):  # bamboo nodes
            d.line([(x - wd * 0.8, ny), (x + wd * 0.8, ny)], fill=tone, width=p.lw(1.5))
    for _ in range(int(rng.integers(10, 25))):  # rain / hatching: thin verticals
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        d.line([(x, y), (x + 0.5 * p.s, y + rng.uniform(10, 30) * p.s)], fill=50, width=1)
    p.extras(p_fig=0.5, p_bub=0.5)


def _paint_horror(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    dark = rng.random() < 0.75
    bg = int(rng.integers(5, 45)) if dark else 235
    d.rectangle([0, 0, w, h], fill=bg)
    if not dark:  # heavy cross-hatching over white
        step = rng.uniform(3, 5) * p.s
        for k in np.arange(-h, w, step):
            d.line([(k, 0), (k + h, h)], fill=40, width=1)
    # A staring face: white eyes with pinprick pupils in the dark.
    m = min(w, h)
    fx, fy, fr = rng.uniform(0.25, 0.75) * w, rng.uniform(0.3, 0.7) * h, m * rng.uniform(0.15, 0.3)
    d.ellipse([fx - fr, fy - fr * 1.2, fx + fr, fy + fr * 1.2], fill=int(rng.integers(60, 120)), outline=0, width=p.lw(2))
    for ex in (-0.4, 0.4):
        d.ellipse([fx + ex * fr - fr * 0.25, fy - fr * 0.3, fx + ex * fr + fr * 0.25, fy], fill=255)
        d.ellipse([fx + ex * fr - fr * 0.05, fy - fr * 0.2, fx + ex * fr + fr * 0.05, fy - fr * 0.1], fill=0)
    p.faces.append(((fx - fr, fy - fr * 1.2, fx + fr, fy + fr * 1.2), int(rng.integers(p.n_characters))))
    # Drips running down from the top of the panel.
    for x in rng.uniform(0, w, size=int(rng.integers(6, 16))):
        wd = rng.uniform(2, 6) * p.s
        L = rng.uniform(0.15, 0.7) * h
        col = 0 if not dark else 200
        d.rectangle([x - wd / 2, 0, x + wd / 2, L], fill=col)
        d.ellipse([x - wd, L - wd, x + wd, L + wd], fill=col)
    p.extras(p_fig=0.2, p_bub=0.4, ink=0, paper=220)


def _paint_humor(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    m = min(w, h)
    # One big round goofy face with thick outline, sweat drops and exclamation marks.
    r = m * rng.uniform(0.28, 0.4)
    cx, cy = rng.uniform(0.4, 0.6) * w, rng.uniform(0.42, 0.58) * h
    lw = p.lw(5.5)  # thick outlines keep the round shape visible at low resolution
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255, outline=0, width=lw)
    for ex in (-0.35, 0.35):
        d.ellipse([cx + ex * r - r * 0.08, cy - r * 0.3, cx + ex * r + r * 0.08, cy - r * 0.1], fill=0)
    d.chord([cx - r * 0.6, cy - r * 0.25, cx + r * 0.6, cy + r * 0.75], 0, 180, fill=0)
    p.faces.append(((cx - r, cy - r, cx + r, cy + r), int(rng.integers(p.n_characters))))
    for _ in range(int(rng.integers(2, 5))):
        a = rng.uniform(-2.6, -0.5)
        dr = r * rng.uniform(1.1, 1.4)
        _drop(d, cx + dr * math.cos(a), cy + dr * math.sin(a), r * rng.uniform(0.2, 0.35), 255, 0, p.lw(2))
    for _ in range(int(rng.integers(1, 4))):  # big round blobs in the background
        x, y, rr = rng.uniform(0, w), rng.uniform(0, h), m * rng.uniform(0.06, 0.14)
        d.ellipse([x - rr, y - rr, x + rr, y + rr], outline=0, width=p.lw(2.5))
    if rng.random() < 0.7:
        x, y = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.3) * h
        d.rectangle([x - 2 * p.s, y, x + 2 * p.s, y + 12 * p.s], fill=0)
        d.ellipse([x - 2.5 * p.s, y + 15 * p.s, x + 2.5 * p.s, y + 20 * p.s], fill=0)
    p.extras(p_fig=0.0, p_bub=0.5)


def _paint_love_romance(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    # Gradient screentone: dots grow towards one side, the classic soft romance backdrop.
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    if rng.random() < 0.5:
        yy = 1 - yy
    period = rng.uniform(4.5, 6.0) * p.s
    radius = (0.05 + 0.4 * yy) * period * np.ones((1, w), np.float32)
    p.img.paste(Image.fromarray(_dot_tone(w, h, period, radius, ink=int(rng.integers(110, 160)))))
    # Flowers (petal rings) and soap bubbles.
    for _ in range(int(rng.integers(3, 8))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(6, 16) * p.s
        npet = int(rng.integers(5, 8))
        rot = rng.uniform(0, 6.3)
        for k in range(npet):
            a = rot + 2 * math.pi * k / npet
            px, py = x + r * 0.6 * math.cos(a), y + r * 0.6 * math.sin(a)
            d.ellipse([px - r * 0.45, py - r * 0.45, px + r * 0.45, py + r * 0.45], fill=255, outline=80)
        d.ellipse([x - r * 0.3, y - r * 0.3, x + r * 0.3, y + r * 0.3], fill=170, outline=80)
    for _ in range(int(rng.integers(5, 12))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 9) * p.s
        d.ellipse([x - r, y - r, x + r, y + r], outline=60, width=1, fill=245)
        d.ellipse([x - r * 0.5, y - r * 0.6, x - r * 0.1, y - r * 0.2], fill=255)
    p.extras(p_fig=0.7, p_bub=0.4, ink=40)


def _paint_romantic_comedy(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    if rng.random() < 0.7:  # flat medium tone, darker than love romance's airy gradients
        period = rng.uniform(3.5, 5.0) * p.s
        p.img.paste(Image.fromarray(_dot_tone(w, h, period, period * rng.uniform(0.3, 0.38), ink=int(rng.integers(20, 70)))))
    for _ in range(int(rng.integers(4, 9))):
        x, y, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 22) * p.s
        style = rng.random()
        _heart(d, x, y, s, fill=0 if style < 0.45 else 255, outline=0, width=p.lw(1.5))
    p.extras(p_fig=0.7, p_bub=0.0)
    # Big round balloons (the comedic back-and-forth).
    m = min(w, h)
    for _ in range(int(rng.integers(1, 3))):
        rx = m * rng.uniform(0.18, 0.3)
        p.bubble(rng.uniform(rx, max(rx + 1, w - rx)), rng.uniform(rx, max(rx + 1, h - rx)), rx, rx * rng.uniform(0.8, 1.1))


def _paint_scifi(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    # Mostly flat mid-grey tech panels (screens, hull plating), sometimes black space: the
    # page reads as an even grey mosaic of small frames.
    space = rng.random() < 0.25
    bg = int(rng.integers(5, 30)) if space else int(rng.integers(105, 150))
    ink = 230
    d.rectangle([0, 0, w, h], fill=bg)
    # A regular square grid (floors, screens, hull plating).
    step = rng.uniform(9, 16) * p.s
    ox, oy = rng.uniform(0, step), rng.uniform(0, step)
    for x in np.arange(ox, w, step):
        d.line([(x, 0), (x, h)], fill=ink, width=1)
    for y in np.arange(oy, h, step):
        d.line([(0, y), (w, y)], fill=ink, width=1)
    # Radar rings and hexagon / rectangle tech shapes.
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    for r in np.arange(6 * p.s, min(w, h) * 0.6, rng.uniform(6, 10) * p.s):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=ink, width=p.lw(1.2))
    for _ in range(int(rng.integers(2, 6))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(6, 18) * p.s
        d.polygon([(x + r * math.cos(k * math.pi / 3), y + r * math.sin(k * math.pi / 3)) for k in range(6)], outline=ink, fill=0)
        d.rectangle([x - r * 0.3, y - r * 0.3, x + r * 0.3, y + r * 0.3], fill=ink)
    p.extras(p_fig=0.3, p_bub=0.3)


def _paint_sports(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    # Horizontal motion streaks across the whole panel, at a shared slight angle.
    ang = rng.uniform(-0.15, 0.15)
    gap = rng.uniform(2.2, 3.8) * p.s
    for y in np.arange(rng.uniform(0, gap), h + w * abs(ang), gap):
        x0 = rng.uniform(-0.2, 0.5) * w
        x1 = x0 + rng.uniform(0.3, 1.0) * w
        d.line([(x0, y - x0 * ang), (x1, y - x1 * ang)], fill=int(rng.integers(0, 120)), width=1)
    # Balls: circles with seam arcs (baseball) or a dark patch (soccer).
    for _ in range(int(rng.integers(1, 4))):
        x, y, r = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h, rng.uniform(7, 18) * p.s
        d.ellipse([x - r, y - r, x + r, y + r], fill=255, outline=0, width=p.lw(2))
        if rng.random() < 0.5:
            d.arc([x - 1.6 * r, y - r, x - 0.2 * r, y + r], -50, 50, fill=0, width=p.lw(1.2))
            d.arc([x + 0.2 * r, y - r, x + 1.6 * r, y + r], 130, 230, fill=0, width=p.lw(1.2))
        else:
            d.polygon([(x + 0.35 * r * math.cos(k * 1.2566), y + 0.35 * r * math.sin(k * 1.2566)) for k in range(5)], fill=0)
        # A short trail behind the ball.
        for k in range(3):
            d.line([(x - r * (1.3 + 0.5 * k), y - r * 0.5 + k * r * 0.5), (x - r * (3.5 + k), y - r * 0.5 + k * r * 0.5)], fill=0, width=p.lw(1.5))
    p.extras(p_fig=0.6, p_bub=0.4)


def _paint_suspense(p: _Panel, i: int) -> None:
    d, rng, w, h = p.draw, p.rng, p.w, p.h
    # Hard diagonal shadow: a black region bounded by a slanted line, high contrast only.
    x_top, x_bot = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * w
    if rng.random() < 0.5:
        d.polygon([(x_top, 0), (w + 1, 0), (w + 1, h + 1), (x_bot, h + 1)], fill=0)
    else:
        d.polygon([(-1, 0), (x_top, 0), (x_bot, h + 1), (-1, h + 1)], fill=0)
    # Venetian-blind shadow bands across part of the panel.
    if rng.random() < 0.7:
        period = rng.uniform(10, 18) * p.s
        band = period * rng.uniform(0.35, 0.55)
        slope = rng.uniform(0.4, 1.0) * (1 if rng.random() < 0.5 else -1)
        for k in np.arange(-h, w + h, period):
            d.polygon([(k, 0), (k + band, 0), (k + band + slope * h, h), (k + slope * h, h)], fill=0)
    # A silhouette with a glinting eye.
    m = min(w, h)
    r = m * rng.uniform(0.12, 0.2)
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.5) * h
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=0, outline=255, width=p.lw(1))
    d.polygon([(cx - r * 1.2, cy + r * 0.9), (cx + r * 1.2, cy + r * 0.9), (cx + r * 1.6, h), (cx - r * 1.6, h)], fill=0, outline=255)
    d.ellipse([cx + r * 0.2, cy - r * 0.15, cx + r * 0.45, cy + r * 0.05], fill=255)
    slot = int(rng.integers(p.n_characters))
    p.faces.append(((cx - r, cy - r, cx + r, cy + r), slot))
    p.bodies.append(((cx - r * 1.6, cy - r, cx + r * 1.6, h), slot))
    p.extras(p_fig=0.0, p_bub=0.4)


# --------------------------------------------------------------------------------------
# Genre layouts: the panel polygons for a page's live area.
# --------------------------------------------------------------------------------------


def _layout(genre: str, rng: np.random.Generator, W: int, H: int, s: float) -> tuple[list[list[Point]], int]:
    """Panel polygons and the gutter colour (255 white, 0 black) for a genre."""
    m = rng.uniform(10, 16) * s  # page margin
    g = rng.uniform(5, 8) * s  # gutter
    page = _rect(m, m, W - m, H - m)

    if genre == "four-frame cartoons":
        # Four equal frames stacked, in one narrow column or two columns of four.
        title = rng.uniform(0.06, 0.1) * H
        if rng.random() < 0.5:
            cw = rng.uniform(0.55, 0.7) * W
            x0 = (W - cw) / 2 + rng.uniform(-0.05, 0.05) * W
            cols = [_rect(x0, m + title, x0 + cw, H - m)]
        else:
            cols = _vcuts(_rect(m, m + title, W - m, H - m), [0.5], 2.5 * g)
        panels = []
        for c in cols:
            panels += _hcuts(c, [0.25, 0.5, 0.75], g)
        return panels, 255

    if genre == "battle":
        # Rows cut by steep slants, each row split by a slanted cut.
        # The cuts zigzag (alternate slant directions) and the gutters are wide, so the
        # white gutters stand out against the dark speed lines even when downsampled.
        n = int(rng.integers(3, 5))
        g *= 1.6
        sign = [float(rng.choice([-1, 1]))]

        def zigzag() -> float:
            sign[0] = -sign[0]
            return rng.uniform(0.08, 0.16) * W * sign[0]

        rows = _hcuts(page, _fractions(rng, n, 0.3), g, slant=zigzag)
        panels = []
        for r in rows:
            if rng.random() < 0.75:
                panels += _vcuts(r, [rng.uniform(0.4, 0.6)], g, slant=lambda: rng.uniform(0.1, 0.3) * H / n * rng.choice([-1, 1]))
            else:
                panels.append(r)
        return panels, 255

    if genre == "horror":
        # Irregular stacked panels on a black page (black gutters).
        n = int(rng.integers(2, 4))
        rows = _hcuts(page, _fractions(rng, n, 0.6), g, slant=lambda: rng.uniform(-0.03, 0.03) * W)
        panels = []
        for r in rows:
            panels += _vcuts(r, _fractions(rng, int(rng.integers(1, 3)), 0.5), g) if rng.random() < 0.5 else [r]
        return panels, 0

    if genre == "love romance":
        # A tall panel down one side with stacked panels beside it.
        split = rng.uniform(0.4, 0.55)
        left, right = _vcuts(page, [split], g)
        tall, other = (right, left) if rng.random() < 0.8 else (left, right)  # mostly right: read first
        return [tall] + _hcuts(other, _fractions(rng, int(rng.integers(2, 4)), 0.4), g), 255

    if genre == "romantic comedy":
        # A regular grid, three rows of two.
        rows = _hcuts(page, _fractions(rng, 3, 0.15), g)
        panels = []
        for r in rows:
            panels += _vcuts(r, [rng.uniform(0.4, 0.6)], g)
        return panels, 255

    if genre == "sports":
        # Wide full-width strips.
        n = int(rng.integers(4, 6))
        rows = _hcuts(page, _fractions(rng, n, 0.2), g, slant=lambda: rng.uniform(-0.02, 0.02) * W)
        panels = []
        for r in rows:
            panels += _vcuts(r, [rng.uniform(0.3, 0.7)], g) if rng.random() < 0.15 else [r]
        return panels, 255

    if genre == "science fiction":
        # A dense rectilinear grid of small panels.
        rows = _hcuts(page, _fractions(rng, int(rng.integers(4, 6)), 0.2), g)
        panels = []
        for r in rows:
            panels += _vcuts(r, _fractions(rng, int(rng.integers(2, 4)), 0.2), g)
        return panels, 255

    if genre == "historical drama":
        # Tall columns from top to bottom (read right to left), sometimes one split.
        cols = _vcuts(page, _fractions(rng, 3 if rng.random() < 0.75 else 2, 0.2), g)
        panels = []
        for c in cols:
            panels += _hcuts(c, [rng.uniform(0.3, 0.7)], g) if rng.random() < 0.15 else [c]
        return panels, 255

    if genre == "humor":
        # Four big panels, two by two.
        rows = _hcuts(page, [rng.uniform(0.42, 0.58)], g)
        panels = []
        for r in rows:
            panels += _vcuts(r, [rng.uniform(0.4, 0.6)], g)
        return panels, 255

    if genre == "fantasy":
        # A large splash panel with a strip of small panels above or below.
        f = rng.uniform(0.6, 0.75)
        if rng.random() < 0.85:
            splash, rest = _hcuts(page, [f], g)
        else:
            rest, splash = _hcuts(page, [1 - f], g)
        return [splash] + _vcuts(rest, _fractions(rng, int(rng.integers(2, 4)), 0.3), g), 255

    if genre == "suspense":
        # Cinematic: thin letterbox strips around one large panel.
        n_thin = int(rng.integers(2, 4))
        fr = list(rng.uniform(0.1, 0.14, size=n_thin))
        big_at = int(rng.integers(1, n_thin))  # strips above and below the big panel
        heights = fr[:big_at] + [1.0 - sum(fr)] + fr[big_at:]
        return _hcuts(page, np.cumsum(heights)[:-1], g), 255

    if genre == "animal":
        # Two by three, later drawn with rounded corners.
        rows = _hcuts(page, _fractions(rng, 3, 0.15), g)
        panels = []
        for r in rows:
            panels += _vcuts(r, [rng.uniform(0.4, 0.6)], g) if rng.random() < 0.75 else [r]
        return panels, 255

    raise ValueError(f"unknown genre {genre!r}; expected one of {GENRES}")


_PAINTERS: dict[str, Callable[[_Panel, int], None]] = {
    "animal": _paint_animal,
    "battle": _paint_battle,
    "fantasy": _paint_fantasy,
    "four-frame cartoons": _paint_four_frame,
    "historical drama": _paint_historical,
    "horror": _paint_horror,
    "humor": _paint_humor,
    "love romance": _paint_love_romance,
    "romantic comedy": _paint_romantic_comedy,
    "science fiction": _paint_scifi,
    "sports": _paint_sports,
    "suspense": _paint_suspense,
}
assert set(_PAINTERS) == set(GENRES)


def _clip_box(box, x0: float, y0: float, x1: float, y1: float) -> Box | None:
    bx0, by0 = max(box[0], x0), max(box[1], y0)
    bx1, by1 = min(box[2], x1), min(box[3], y1)
    if bx1 - bx0 < 2 or by1 - by0 < 2:
        return None  # fully outside the panel: not visible, so not annotated
    return int(round(bx0)), int(round(by0)), int(round(bx1)), int(round(by1))


def render_page_with_layout(
    genre: str,
    rng: np.random.Generator,
    size: tuple[int, int] = DEFAULT_PAGE_SIZE,
    n_characters: int = 4,
) -> tuple[Image.Image, PageLayout]:
    """Render one page of ``genre`` and return it with the boxes it drew.

    ``size`` is (width, height) in pixels; drawing scales with the width so any size works.
    The image is RGB with equal channels (manga scans are grey). Frame boxes are the
    bounding boxes of the drawn panel polygons; text/face/body boxes are clipped to their
    panel, and anything not visible is not annotated.
    """
    if genre not in _PAINTERS:
        raise ValueError(f"unknown genre {genre!r}; expected one of {GENRES}")
    W, H = int(size[0]), int(size[1])
    s = W / 320.0
    polys, gutter = _layout(genre, rng, W, H, s)
    paper = int(rng.integers(238, 256))
    page = Image.new("L", (W, H), paper if gutter == 255 else int(rng.integers(0, 25)))
    pdraw = ImageDraw.Draw(page)
    layout = PageLayout(genre=genre, width=W, height=H)
    border = max(1, int(round(rng.uniform(1.5, 2.5) * s * (1.8 if genre == "science fiction" else 1.0))))
    rounded = genre == "animal"  # soft rounded frames are part of the animal look
    for i, poly in enumerate(polys):
        fx0, fy0, fx1, fy1 = _bbox(poly)
        x0, y0 = max(0, int(math.floor(fx0))), max(0, int(math.floor(fy0)))
        x1, y1 = min(W, int(math.ceil(fx1))), min(H, int(math.ceil(fy1)))
        pw, ph = x1 - x0, y1 - y0
        if pw < 4 or ph < 4:
            continue
        img = Image.new("L", (pw, ph), paper)
        panel = _Panel(img, ImageDraw.Draw(img), pw, ph, s, rng, genre, n_characters)
        _PAINTERS[genre](panel, i)
        local = [(x - x0, y - y0) for x, y in poly]
        mask = Image.new("L", (pw, ph), 0)
        mdraw = ImageDraw.Draw(mask)
        if rounded:
            mdraw.rounded_rectangle([0, 0, pw - 1, ph - 1], radius=int(min(pw, ph) * 0.12), fill=255)
        else:
            mdraw.polygon(local, fill=255)
        page.paste(img, (x0, y0), mask)
        if rounded:
            pdraw.rounded_rectangle([x0, y0, x1 - 1, y1 - 1], radius=int(min(pw, ph) * 0.12), outline=0, width=border)
        elif not (genre == "love romance" and i > 0 and rng.random() < 0.5):
            # (Love romance leaves some frames borderless, blending into the page.)
            pdraw.polygon(poly, outline=0 if gutter == 255 else 90, width=border)
        layout.frames.append((x0, y0, x1, y1))
        for box, text in panel.texts:
            b = _clip_box((box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0), x0, y0, x1, y1)
            if b:
                layout.texts.append((b, text))
        for src, dst in ((panel.faces, layout.faces), (panel.bodies, layout.bodies)):
            for box, slot in src:
                b = _clip_box((box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0), x0, y0, x1, y1)
                if b:
                    dst.append((b, slot))
    # Scanner-ish finish: a little contrast jitter and grain, so pages are never pixel-clean.
    arr = np.asarray(page, dtype=np.float32)
    gain, bias, sigma = rng.uniform(0.9, 1.0), rng.uniform(0, 12), rng.uniform(2.0, 6.0)
    noise = rng.standard_normal(arr.shape, dtype=np.float32)  # float32 draws: half the cost
    noise *= np.float32(sigma)
    arr *= np.float32(gain)
    arr += noise
    arr += np.float32(bias)
    arr = np.clip(arr, 0, 255, out=arr).astype(np.uint8)
    return Image.fromarray(arr, "L").convert("RGB"), layout


def render_page(genre: str, rng: np.random.Generator, size: tuple[int, int] = DEFAULT_PAGE_SIZE) -> Image.Image:
    """Render one grey-looking RGB manga page of ``genre`` (see ``render_page_with_layout``)."""
    return render_page_with_layout(genre, rng, size)[0]
