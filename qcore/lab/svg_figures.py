"""Plotly figure dicts drawn as inline SVG: the HTML export's charts, with no JavaScript, offline and printable.

The dashboard builds its figures once with Plotly; the export takes the very same figures as plain
data (`fig.to_dict()`, Plotly's JSON figure format) and draws what a report needs: scatter (markers
with their symbols, open markers, per-point colours, lines, text), bar (grouped, stacked, horizontal,
fill patterns), heatmap (with its cell text and colour bar), reference lines and rectangles, log and
category axes, axis titles, subplot titles and a legend. Each point, bar and cell carries its hover
text as an SVG `<title>` (the browser's native tooltip). A trace type it cannot draw is named in
words in the figure, never dropped in silence.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# the drawing's own width in SVG units; the page scales it to its column (CSS width:100%)
WIDTH = 1000
# Plotly's defaults where a figure leaves them out
DEFAULT_HEIGHT = 450
DEFAULT_MARGIN = {"l": 80, "r": 80, "t": 100, "b": 80}
DEFAULT_COLORWAY = ("#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880",
                    "#FF97FF", "#FECB52")
DEFAULT_COLORSCALE = ((0.0, "#0d0887"), (0.5, "#cc4778"), (1.0, "#f0f921"))
FONT = "system-ui,-apple-system,Segoe UI,Roboto,sans-serif"
TEXT_COLOR = "#2a3f5f"
GRID_COLOR = "#E5E8EC"
AXIS_COLOR = "#9AA0A6"
# an average glyph is this many font sizes wide (proportional sans-serif); used to lay out labels
GLYPH_WIDTH = 0.58
# about this many ticks per axis, as Plotly picks them
TICKS = 6
# the trace types drawn here; any other is named in the figure instead
DRAWN = frozenset({"scatter", "scattergl", "bar", "heatmap"})
# the shape types drawn here (add_hline/add_vline make lines, add_hrect/add_vrect boxes)
SHAPES = frozenset({"line", "rect"})
TICK_SIZE = 11.0
_DASHES = {"dash": "6,4", "dot": "2,3", "dashdot": "6,3,2,3", "longdash": "10,5", "longdashdot": "10,4,2,4"}


@dataclass(frozen=True)
class SvgFigure:
    """One drawn figure: the `<svg>` element and what it could not draw, in words."""

    svg: str
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------- plain data out of a figure dict
def values(v: Any) -> list[Any]:
    """A figure dict's array as a (nested) list: lists, numpy arrays and Plotly's base64 typed arrays."""
    if v is None:
        return []
    if isinstance(v, Mapping) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(str(v["dtype"])).newbyteorder("<"))
        shape = v.get("shape")
        if shape:
            a = a.reshape([int(s) for s in str(shape).split(",")])
        return list(a.tolist())
    if hasattr(v, "tolist"):
        out = v.tolist()
        return list(out) if isinstance(out, list) else [out]
    if isinstance(v, list | tuple):
        return list(v)
    return [v]


def _decoded(v: Any) -> Any:
    """A trace or layout with every typed array and numpy array turned into lists, once."""
    if isinstance(v, Mapping):
        return values(v) if "bdata" in v else {k: _decoded(x) for k, x in v.items()}
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, list | tuple):
        return [_decoded(x) for x in v]
    return v


def _at(v: Any, i: int, default: Any = None) -> Any:
    """Per-point attribute: the i-th of an array, or the scalar itself."""
    if isinstance(v, Mapping) and "bdata" in v or hasattr(v, "tolist"):
        v = values(v)
    if isinstance(v, list | tuple):
        return v[i] if i < len(v) and v[i] is not None else default
    return default if v is None else v


def _num(v: Any) -> float | None:
    """A finite float, or None for gaps, text and NaN."""
    if v is None or isinstance(v, bool | str):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _get(d: Mapping[str, Any] | None, *path: str, default: Any = None) -> Any:
    cur: Any = d
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return default
        cur = cur[key]
    return default if cur is None else cur


def _text_of(v: Any) -> str:
    """A title given as text or as {"text": ...}."""
    if isinstance(v, Mapping):
        v = v.get("text")
    return "" if v is None else str(v)


# ---------------------------------------------------------------- text
def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def _plain(s: str) -> str:
    """Plotly's HTML-ish label text as plain lines: <br> breaks, other tags dropped, entities read."""
    s = re.sub(r"<br\s*/?>", "\n", s, flags=re.IGNORECASE)
    s = re.sub(r"</?[a-zA-Z][^>]*>", "", s)
    return html.unescape(s)


def _width(s: str, size: float) -> float:
    return max((len(line) for line in s.split("\n")), default=0) * size * GLYPH_WIDTH


def _f(v: float) -> str:
    """A coordinate with one decimal, trailing zeros dropped: keeps the file small."""
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def _text(x: float, y: float, s: str, size: float, anchor: str = "start", color: str = TEXT_COLOR,
          weight: str = "", rotate: float = 0.0, baseline: str = "") -> str:
    """An SVG <text>, one <tspan> per line; `baseline` "middle" centres it on y, "hanging" hangs it below."""
    lines = _plain(s).split("\n")
    attrs = f'x="{_f(x)}" y="{_f(y)}" font-size="{_f(size)}"'
    if anchor != "start":
        attrs += f' text-anchor="{anchor}"'
    if color != TEXT_COLOR:
        attrs += f' fill="{color}"'
    if weight:
        attrs += f' font-weight="{weight}"'
    if rotate:
        attrs += f' transform="rotate({_f(rotate)} {_f(x)} {_f(y)})"'
    shift = {"middle": -(len(lines) - 1) / 2 * 1.2 * size + 0.35 * size, "hanging": 0.8 * size,
             "bottom": -(len(lines) - 1) * 1.2 * size}.get(baseline, 0.0)
    if len(lines) == 1:
        return f'<text {attrs} dy="{_f(shift)}">{_esc(lines[0])}</text>' if shift else \
            f"<text {attrs}>{_esc(lines[0])}</text>"
    spans = "".join(f'<tspan x="{_f(x)}" dy="{_f(shift if i == 0 else 1.2 * size)}">{_esc(line)}</tspan>'
                    for i, line in enumerate(lines))
    return f"<text {attrs}>{spans}</text>"


# d3-format specs Python's format() does not know: "~" (trim zeros) and "s" (SI prefix)
def _format(v: Any, spec: str) -> str:
    """A value through a d3-style format spec (".3g", "+.2f", "+d"), as Plotly's hover text writes it."""
    f = _num(v)
    if f is None or not spec:
        return "" if v is None else (_tick_label(f) if f is not None and not isinstance(v, int) else str(v))
    spec = spec.replace("~", "").replace("s", "g")
    try:
        return format(int(round(f)), spec) if spec.endswith("d") else format(f, spec)
    except ValueError:
        return str(v)


_FIELD = re.compile(r"%\{([^}:]+)(?::([^}]*))?\}")


def _hover(template: str, fields: Mapping[str, Any]) -> str:
    """A Plotly hovertemplate filled with one point's fields; <extra> text goes on a line of its own."""
    def one(m: re.Match[str]) -> str:
        key, spec = m.group(1).strip(), m.group(2) or ""
        item = re.fullmatch(r"(\w+)\[(\d+)\]", key)
        if item:
            seq = fields.get(item.group(1))
            v = seq[int(item.group(2))] if isinstance(seq, list | tuple) and int(item.group(2)) < len(seq) else None
        else:
            v = fields.get(key)
        return _format(v, spec)

    extra = ""
    found = re.search(r"<extra>(.*?)</extra>", template, flags=re.S)
    if found:
        extra = found.group(1)
        template = template[:found.start()] + template[found.end():]
    out = _plain(_FIELD.sub(one, template))
    extra = _plain(_FIELD.sub(one, extra)).strip()
    return out + (f"\n{extra}" if extra else "")


def _title_el(text: str) -> str:
    return f"<title>{_esc(text)}</title>" if text else ""


# ---------------------------------------------------------------- colours
def _rgb(c: str) -> tuple[float, float, float] | None:
    c = c.strip()
    if c.startswith("#") and len(c) in (4, 7):
        h = c[1:] if len(c) == 7 else "".join(ch * 2 for ch in c[1:])
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    m = re.fullmatch(r"rgba?\(([^)]*)\)", c)
    if m:
        parts = [float(p) for p in m.group(1).split(",")[:3]]
        return parts[0], parts[1], parts[2]
    return None


def _scale_colour(scale: Sequence[tuple[float, str]], t: float) -> str:
    """The colour at t in [0, 1] along a colorscale, interpolated in RGB."""
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in zip(scale, scale[1:], strict=False):
        if t <= t1:
            a, b = _rgb(c0), _rgb(c1)
            if a is None or b is None:
                return c0
            w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return "#" + "".join(f"{round(x + (y - x) * w):02x}" for x, y in zip(a, b, strict=True))
    return scale[-1][1]


def _dark(colour: str) -> bool:
    rgb = _rgb(colour)
    return rgb is not None and (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) < 140


# ---------------------------------------------------------------- axes
@dataclass
class _Axis:
    """One axis as drawn: its type, its range in data units (log10 on a log axis) and its pixels."""

    key: str  # "xaxis", "yaxis2", ...
    letter: str
    spec: Mapping[str, Any]
    kind: str = "linear"
    lo: float = 0.0
    hi: float = 1.0
    px0: float = 0.0  # the pixel of lo (left for x, bottom for y; swapped when reversed)
    px1: float = 1.0
    categories: list[str] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)

    def pos(self, v: Any) -> float | None:
        """A value's pixel, or None when it has none (a gap, or ≤ 0 on a log axis)."""
        u = self.unit(v)
        if u is None:
            return None
        return self.px0 + (u - self.lo) / ((self.hi - self.lo) or 1.0) * (self.px1 - self.px0)

    def unit(self, v: Any) -> float | None:
        """A value in the axis's own units: its index on a category axis, log10 on a log axis."""
        if self.kind == "category":
            key = str(v)
            return float(self.categories.index(key)) if key in self.categories else None
        f = _num(v)
        if f is None:
            return None
        if self.kind == "log":
            return math.log10(f) if f > 0 else None
        return f

    def band(self) -> float:
        """Pixels per unit (a category's width)."""
        return abs(self.px1 - self.px0) / ((self.hi - self.lo) or 1.0)


def _axis_key(ref: str) -> str:
    """"x2" → "xaxis2"."""
    return f"{ref[0]}axis{ref[1:]}"


def _nice_step(span: float, n: int = TICKS) -> float:
    raw = span / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _tick_label(v: float, step: float | None = None) -> str:
    """A tick number as Plotly writes it: the step's decimals, trailing zeros dropped (0.8, 1, 1.2)."""
    if v == 0:
        return "0"
    if step is not None and step > 0:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        if step * 10 ** decimals % 1 > 1e-6:  # 2.5-steps need one digit more
            decimals += 1
        if abs(v) >= 1e6 or abs(v) < 1e-4:
            return f"{v:.3g}"
        text = f"{v:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text  # 0.8, 1, 1.2 as Plotly writes them
    return f"{v:.4g}"


def _linear_ticks(lo: float, hi: float, tickformat: str, suffix: str, prefix: str) -> list[tuple[float, str]]:
    step = _nice_step(hi - lo)
    start = math.ceil(lo / step - 1e-9) * step
    out = []
    k = 0
    while (v := start + k * step) <= hi + step * 1e-9 and k < 50:
        v = 0.0 if abs(v) < step * 1e-9 else v
        label = _format(v, tickformat) if tickformat else _tick_label(v, step)
        out.append((v, f"{prefix}{label}{suffix}"))
        k += 1
    return out


def _log_ticks(lo: float, hi: float, suffix: str, prefix: str) -> list[tuple[float, str]]:
    """Ticks on a log axis (lo, hi in log10): decades, with 2 and 5 between them over a short span."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    mantissas = (1,) if hi - lo > 3 else (1, 2, 5) if hi - lo > 0.7 else (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)
    out = []
    for d in decades:
        for m in mantissas:
            u = d + math.log10(m)
            if lo - 1e-9 <= u <= hi + 1e-9:
                out.append((u, f"{prefix}{m * 10.0 ** d:.4g}{suffix}"))
    if len(out) < 2:  # narrower than one step: plain numbers, placed on the log scale
        lin = _linear_ticks(10 ** lo, 10 ** hi, "", suffix, prefix)
        out = [(math.log10(v), label) for v, label in lin if v > 0]
    return out


# ---------------------------------------------------------------- the figure
@dataclass
class _Trace:
    index: int
    spec: Mapping[str, Any]
    kind: str
    x: list[Any]
    y: list[Any]
    xa: str
    ya: str


def _traces(figure: Mapping[str, Any]) -> list[_Trace]:
    out = []
    for i, t in enumerate(figure.get("data") or []):
        kind = str(t.get("type") or "scatter")
        if kind == "heatmap":
            z = values(t.get("z"))
            rows = len(z)
            cols = max((len(r) if isinstance(r, list) else 1 for r in z), default=0)
            x = values(t.get("x")) or list(range(cols))
            y = values(t.get("y")) or list(range(rows))
        else:
            x, y = values(t.get("x")), values(t.get("y"))
            if not x and y:
                x = list(range(len(y)))
            if not y and x:
                y = list(range(len(x)))
        out.append(_Trace(i, t, kind, x, y, str(t.get("xaxis") or "x"), str(t.get("yaxis") or "y")))
    return out


def _autotype(vals: list[Any]) -> str:
    """Plotly's strict autotype: any text value (even "3") makes a category axis."""
    return "category" if any(isinstance(v, str) for v in vals) else "linear"


def _build_axes(figure: Mapping[str, Any], traces: list[_Trace]) -> dict[str, _Axis]:
    layout = figure.get("layout") or {}
    keys = {_axis_key(t.xa) for t in traces} | {_axis_key(t.ya) for t in traces}
    keys |= {k for k in layout if re.fullmatch(r"[xy]axis\d*", k)}
    if not keys:
        keys = {"xaxis", "yaxis"}
    axes: dict[str, _Axis] = {}
    shapes = list(layout.get("shapes") or [])
    barmode = str(layout.get("barmode") or "group")
    for key in sorted(keys):
        letter = key[0]
        spec = layout.get(key) or {}
        mine = [t for t in traces if t.kind in DRAWN and _axis_key(t.xa if letter == "x" else t.ya) == key]
        horizontal = {t.index for t in mine if t.kind == "bar" and t.spec.get("orientation") == "h"}
        vals: list[Any] = []
        for t in mine:
            vals += t.x if letter == "x" else t.y
        kind = str(spec.get("type") or "-")
        if kind not in ("linear", "log", "category"):
            kind = "category" if any(t.kind == "heatmap" for t in mine) and _autotype(vals) == "category" \
                else _autotype(vals)
        axis = _Axis(key, letter, spec, kind)
        if kind == "category":
            axis.categories = list(dict.fromkeys(str(v) for v in vals if v is not None))
            axis.lo, axis.hi = -0.5, max(len(axis.categories), 1) - 0.5
        else:
            units: list[float] = []
            bars = False
            for t in mine:
                own = t.x if letter == "x" else t.y
                is_value_axis = t.kind == "bar" and ((letter == "y") != (t.index in horizontal))
                if is_value_axis:
                    bars = True
                    base = _bar_bases(t, traces, barmode, letter)
                    own = [(_num(v) or 0.0) + b for v, b in zip(own, base, strict=False)]
                units += [u for v in own if (u := axis.unit(v)) is not None]
            for s in shapes:
                if str(s.get(f"{letter}ref") or "") == key.replace("axis", ""):
                    units += [u for c in ("0", "1") if (u := _num(s.get(f"{letter}{c}"))) is not None]
            rng = [_num(r) for r in values(spec.get("range"))]
            if len(rng) == 2 and rng[0] is not None and rng[1] is not None:
                axis.lo, axis.hi = float(rng[0]), float(rng[1])
            elif units:
                lo, hi = min(units), max(units)
                if bars and kind == "linear":
                    lo, hi = min(lo, 0.0), max(hi, 0.0)
                span = hi - lo
                if span == 0:
                    span = abs(hi) * 0.2 or 1.0
                    lo, hi = lo - span / 2, hi + span / 2
                pad = span * (0.08 if bars else 0.06)
                axis.lo = lo if bars and lo == 0 else lo - pad
                axis.hi = hi if bars and hi == 0 else hi + pad
        if spec.get("autorange") == "reversed":
            axis.lo, axis.hi = axis.hi, axis.lo
        axes[key] = axis
    return axes


def _bar_bases(t: _Trace, traces: list[_Trace], barmode: str, letter: str) -> list[float]:
    """Where each bar of `t` starts: 0, or on top of the traces before it when stacked."""
    own = t.x if letter == "x" else t.y
    if barmode not in ("stack", "relative"):
        return [0.0] * len(own)
    cats = t.y if letter == "x" else t.x
    bases = []
    for i, c in enumerate(cats):
        mine = _num(own[i]) if i < len(own) else None
        b = 0.0
        for other in traces:
            if other.index >= t.index:
                break
            if other.kind != "bar" or (other.xa, other.ya) != (t.xa, t.ya):
                continue
            ocats = other.y if letter == "x" else other.x
            ovals = other.x if letter == "x" else other.y
            for oc, ov in zip(ocats, ovals, strict=False):
                f = _num(ov)
                if oc == c and f is not None and (barmode == "stack" or (f >= 0) == ((mine or 0) >= 0)):
                    b += f
        bases.append(b)
    return bases


def _symbol(symbol: str, cx: float, cy: float, size: float) -> tuple[str, str]:
    """(element name + geometry attributes, "open"/"dot"/"" flags) of a Plotly marker symbol."""
    base = symbol.removesuffix("-dot").removesuffix("-open")
    r = size / 2
    if base == "circle":
        return f'circle cx="{_f(cx)}" cy="{_f(cy)}" r="{_f(r)}"', base
    pts: list[tuple[float, float]]
    if base == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif base == "diamond":
        q = r * 1.3
        pts = [(0, -q), (q, 0), (0, q), (-q, 0)]
    elif base.startswith("triangle"):
        q = r * 1.2
        way = base.removeprefix("triangle-") or "up"
        pts = {"up": [(0, -q), (q, q * 0.7), (-q, q * 0.7)], "down": [(0, q), (q, -q * 0.7), (-q, -q * 0.7)],
               "left": [(-q, 0), (q * 0.7, -q), (q * 0.7, q)], "right": [(q, 0), (-q * 0.7, -q), (-q * 0.7, q)]
               }.get(way, [(0, -q), (q, q * 0.7), (-q, q * 0.7)])
    elif base in ("star", "hexagon", "pentagon"):
        n, inner = {"star": (5, 0.45), "hexagon": (6, 1.0), "pentagon": (5, 1.0)}[base]
        q = r * 1.25
        step = 1 if inner == 1.0 else 2
        pts = []
        for k in range(n * step):
            rad = q if k % 2 == 0 or step == 1 else q * inner
            a = -math.pi / 2 + k * math.pi * 2 / (n * step)
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif base in ("cross", "x"):
        w = r / 3
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
               (-w, -w)]
        if base == "x":
            c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
            pts = [(px * c - py * s, px * s + py * c) for px, py in pts]
    else:
        return f'circle cx="{_f(cx)}" cy="{_f(cy)}" r="{_f(r)}"', "circle"
    d = "M" + "L".join(f"{_f(cx + px)} {_f(cy + py)}" for px, py in pts) + "Z"
    return f'path d="{d}"', base


def _marker(symbol: str, cx: float, cy: float, size: float, colour: str, line_colour: str, line_width: float,
            title: str) -> str:
    """One marker: filled, or open (outline in its colour), with a centre dot for "-dot"."""
    geometry, _ = _symbol(symbol, cx, cy, size)
    is_open = "-open" in symbol
    if is_open:
        paint = f'fill="none" stroke="{colour}" stroke-width="{_f(max(line_width, 1.5))}"'
    else:
        paint = f'fill="{colour}"' + (f' stroke="{line_colour}" stroke-width="{_f(line_width)}"'
                                      if line_width > 0 else "")
    out = f"<{geometry} {paint}>{_title_el(title)}</{geometry.split(' ', 1)[0]}>" if title else \
        f"<{geometry} {paint}/>"
    if symbol.endswith("-dot"):
        out += f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="{_f(max(size / 7, 1.2))}" fill="{colour}"/>'
    return out


_PATTERNS = {"/": "M-1 1L1 -1M0 8L8 0M7 9L9 7", "\\": "M-1 7L1 9M0 0L8 8M7 -1L9 1", "x": "M0 0L8 8M0 8L8 0",
             "-": "M0 4H8", "|": "M4 0V8", "+": "M0 4H8M4 0V8", ".": ""}


class _Canvas:
    """Collects a figure's SVG parts, its <defs> and its notes."""

    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.parts: list[str] = []
        self.defs: dict[str, str] = {}
        self.notes: list[str] = []

    def pattern(self, shape: str, colour: str) -> str:
        """A fill pattern's id (drawn once per figure)."""
        key = f"{self.ident}-p{len(self.defs)}"
        for k, v in self.defs.items():
            if f'data-k="{_esc(shape)}{colour}"' in v:
                return k
        mark = ('<circle cx="4" cy="4" r="1.6" fill="#fff"/>' if shape == "."
                else f'<path d="{_PATTERNS.get(shape, _PATTERNS["/"])}" stroke="#fff" stroke-width="1.6"/>')
        self.defs[key] = (f'<pattern id="{key}" data-k="{_esc(shape)}{colour}" width="8" height="8" '
                          f'patternUnits="userSpaceOnUse"><rect width="8" height="8" fill="{colour}"/>{mark}'
                          "</pattern>")
        return key


def _colour(trace: _Trace, colorway: Sequence[str], attr: Any, i: int) -> str:
    c = _at(attr, i)
    return c if isinstance(c, str) and c else colorway[trace.index % len(colorway)]


def _fields(trace: _Trace, i: int, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"x": _at(trace.x, i), "y": _at(trace.y, i), "text": _at(trace.spec.get("text"), i),
                           "customdata": _at(trace.spec.get("customdata"), i), "pointNumber": i,
                           "fullData.name": trace.spec.get("name")}
    out.update(extra)
    return out


def _hover_text(trace: _Trace, fields: Mapping[str, Any]) -> str:
    spec = trace.spec
    if str(spec.get("hoverinfo") or "") in ("skip", "none"):
        return ""
    template = _at(spec.get("hovertemplate"), int(fields.get("pointNumber") or 0))
    if isinstance(template, str) and template:
        return _hover(template, fields)
    parts = [f"({_format(fields.get('x'), '')}, {_format(fields.get('y'), '')})"]
    if fields.get("z") is not None:
        parts.append(_format(fields.get("z"), ""))
    if fields.get("text") not in (None, ""):
        parts.append(_plain(str(fields["text"])))
    if spec.get("name"):
        parts.append(_plain(str(spec["name"])))
    return "\n".join(parts)


def _draw_scatter(c: _Canvas, t: _Trace, ax: _Axis, ay: _Axis, colorway: Sequence[str]) -> None:
    spec = t.spec
    n = len(t.y)
    mode = str(spec.get("mode") or ("lines+markers" if n < 20 else "lines"))
    pts = [(ax.pos(_at(t.x, i)), ay.pos(_at(t.y, i))) for i in range(n)]
    if "lines" in mode:
        line = spec.get("line") or {}
        colour = str(line.get("color") or colorway[t.index % len(colorway)])
        dash = _DASHES.get(str(line.get("dash") or ""), "")
        runs: list[list[tuple[float, float]]] = [[]]
        for px, py in pts:
            if px is None or py is None:
                runs.append([])
            else:
                runs[-1].append((px, py))
        for run in runs:
            if len(run) < 2:
                continue
            if line.get("shape") == "hv":
                stepped = [run[0]]
                for (_, y0), (x1, y1) in zip(run, run[1:], strict=False):
                    stepped += [(x1, y0), (x1, y1)]
                run = stepped
            d = "M" + "L".join(f"{_f(x)} {_f(y)}" for x, y in run)
            c.parts.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="{_f(_num(line.get("width")) or 2)}"'
                           + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
    marker = spec.get("marker") or {}
    mline = marker.get("line") or {}
    texts = spec.get("text")
    font = spec.get("textfont") or {}
    for i, (px, py) in enumerate(pts):
        if px is None or py is None:
            continue
        size = _num(_at(marker.get("size"), i)) or 6.0
        if "markers" in mode:
            colour = _colour(t, colorway, marker.get("color"), i)
            lw = _num(_at(mline.get("width"), i)) or 0.0
            lc = _at(mline.get("color"), i) or "#444"
            c.parts.append(_marker(str(_at(marker.get("symbol"), i) or "circle"), px, py, size, colour, str(lc), lw,
                                   _hover_text(t, _fields(t, i))))
        label = _at(texts, i)
        if "text" in mode and label not in (None, ""):
            where = str(_at(spec.get("textposition"), i) or "middle center")
            fs = _num(_at(font.get("size"), i)) or 12.0
            gap = (size / 2 if "markers" in mode else 0) + 3
            tx, anchor = px, "middle"
            if where.endswith("right"):
                tx, anchor = px + gap, "start"
            elif where.endswith("left"):
                tx, anchor = px - gap, "end"
            ty, base = py, "middle"
            if where.startswith("top"):
                ty, base = py - gap, "bottom"
            elif where.startswith("bottom"):
                ty, base = py + gap, "hanging"
            colour = str(_at(font.get("color"), i) or TEXT_COLOR)
            c.parts.append(_text(tx, ty, str(label), fs, anchor, colour, baseline=base))


def _draw_bars(c: _Canvas, bars: list[_Trace], axes: dict[str, _Axis], layout: Mapping[str, Any],
               all_traces: list[_Trace], colorway: Sequence[str]) -> None:
    """Bars of one subplot: side by side per category when grouped, on top of each other when stacked."""
    barmode = str(layout.get("barmode") or "group")
    gap = _num(layout.get("bargap"))
    width_share = 1.0 - (0.2 if gap is None else gap)
    grouped = barmode == "group" and len(bars) > 1
    for k, t in enumerate(bars):
        spec = t.spec
        horizontal = spec.get("orientation") == "h"
        cat_axis = axes[_axis_key(t.ya if horizontal else t.xa)]
        val_axis = axes[_axis_key(t.xa if horizontal else t.ya)]
        cats, vals = (t.y, t.x) if horizontal else (t.x, t.y)
        base = _bar_bases(t, all_traces, barmode, "x" if horizontal else "y")
        band = cat_axis.band()
        each = band * width_share / (len(bars) if grouped else 1)
        offset = (k - (len(bars) - 1) / 2) * each if grouped else 0.0
        marker = spec.get("marker") or {}
        pattern = marker.get("pattern") or {}
        texts = spec.get("text")
        font = spec.get("textfont") or {}
        for i, cat in enumerate(cats):
            v = _num(_at(vals, i))
            centre = cat_axis.pos(cat)
            if v is None or centre is None:
                continue
            b0, b1 = val_axis.pos(base[i]), val_axis.pos(base[i] + v)
            if b1 is None:
                continue
            if b0 is None:  # a log axis has no zero: bars start at its bottom
                b0 = val_axis.px0
            colour = _colour(t, colorway, marker.get("color"), i)
            shape = str(_at(pattern.get("shape"), i) or "")
            fill = f"url(#{c.pattern(shape, colour)})" if shape else colour
            lo = centre + offset - each / 2
            if horizontal:
                x, y, w, h = min(b0, b1), lo, abs(b1 - b0), each
            else:
                x, y, w, h = lo, min(b0, b1), each, abs(b1 - b0)
            title = _hover_text(t, _fields(t, i))
            c.parts.append(f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(max(h, 0.5))}" '
                           f'fill="{fill}">{_title_el(title)}</rect>')
            label = _at(texts, i)
            if label in (None, ""):
                continue
            fs = _num(font.get("size")) or 11.0
            if not horizontal:  # a label wider than its bar shrinks to fit, as Plotly's does; too small, it goes
                fs = min(fs, (w + 4) / (max(len(str(label)), 1) * GLYPH_WIDTH))
                if fs < 6:
                    continue  # the bar's <title> still says its value
            where = str(spec.get("textposition") or "auto")
            room = w if horizontal else h
            inside = where == "inside" or (where == "auto" and room > _width(str(label), fs) + 6 if horizontal
                                           else where == "auto" and room > fs + 6)
            if horizontal:
                tx = (x + w - 4) if inside else (x + w + 4)
                c.parts.append(_text(tx, y + h / 2, str(label), fs, "end" if inside else "start",
                                     "#fff" if inside and _dark(colour) else TEXT_COLOR, baseline="middle"))
            else:
                up = v >= 0
                ty = (y + 4 if up else y + h - 4) if inside else (y - 3 if up else y + h + 3)
                c.parts.append(_text(x + w / 2, ty, str(label), fs, "middle",
                                     "#fff" if inside and _dark(colour) else TEXT_COLOR,
                                     baseline=("hanging" if inside == up else "bottom")))


def _colorscale(spec: Mapping[str, Any], layout: Mapping[str, Any]) -> list[tuple[float, str]]:
    raw = spec.get("colorscale") or _get(layout, "template", "data", "heatmap", default=[{}])[0].get("colorscale")
    scale = [(float(a), str(b)) for a, b in raw] if isinstance(raw, list | tuple) and raw and \
        isinstance(raw[0], list | tuple) else list(DEFAULT_COLORSCALE)
    if spec.get("reversescale"):
        scale = [(1 - a, b) for a, b in reversed(scale)]
    return scale


def _z_range(spec: Mapping[str, Any], z: list[list[Any]]) -> tuple[float, float]:
    flat = [f for row in z for v in (row if isinstance(row, list) else [row]) if (f := _num(v)) is not None]
    lo, hi = _num(spec.get("zmin")), _num(spec.get("zmax"))
    dlo, dhi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    mid = _num(spec.get("zmid"))
    if lo is None and hi is None and mid is not None:
        half = max(abs(dhi - mid), abs(mid - dlo)) or 1.0
        return mid - half, mid + half
    lo = dlo if lo is None else lo
    hi = dhi if hi is None else hi
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def _draw_heatmap(c: _Canvas, t: _Trace, ax: _Axis, ay: _Axis, layout: Mapping[str, Any]) -> tuple[float, float,
                                                                                                    list[tuple[float, str]]]:
    spec = t.spec
    z = [r if isinstance(r, list) else [r] for r in values(spec.get("z"))]
    scale = _colorscale(spec, layout)
    zlo, zhi = _z_range(spec, z)
    text = [r if isinstance(r, list) else [r] for r in values(spec.get("text"))]
    template = str(spec.get("texttemplate") or "")
    font = spec.get("textfont") or {}
    for r, row in enumerate(z):
        cy = ay.pos(_at(t.y, r))
        if cy is None:
            continue
        for col, v in enumerate(row):
            f = _num(v)
            cx = ax.pos(_at(t.x, col))
            if f is None or cx is None:
                continue
            w, h = ax.band(), ay.band()
            colour = _scale_colour(scale, (f - zlo) / (zhi - zlo))
            cell_text = text[r][col] if r < len(text) and col < len(text[r]) else None
            fields = _fields(t, col, x=_at(t.x, col), y=_at(t.y, r), z=v, text=cell_text)
            fields["pointNumber"] = 0
            c.parts.append(f'<rect x="{_f(cx - w / 2)}" y="{_f(cy - h / 2)}" width="{_f(w)}" height="{_f(h)}" '
                           f'fill="{colour}">{_title_el(_hover_text(t, fields))}</rect>')
            label = _hover(template, fields) if template else ""
            if label:
                fs = _num(font.get("size")) or min(12.0, h * 0.6)
                c.parts.append(_text(cx, cy, label, fs, "middle", "#fff" if _dark(colour) else "#1B1F24",
                                     baseline="middle"))
    return zlo, zhi, scale


def _ref_pos(ref: str, v: Any, axes: dict[str, _Axis], plot: tuple[float, float, float, float],
             letter: str) -> float | None:
    """A shape's or annotation's coordinate: paper, an axis's domain ("x domain"), or data on an axis."""
    left, top, right, bottom = plot
    f = _num(v)
    ref = ref or "paper"
    if ref == "paper":
        if f is None:
            return None
        return left + f * (right - left) if letter == "x" else bottom - f * (bottom - top)
    name = ref.split(" ")[0]
    axis = axes.get(_axis_key(name))
    if axis is None:
        return None
    if ref.endswith(" domain"):
        if f is None:
            return None
        a, b = (axis.px0, axis.px1) if (axis.hi >= axis.lo) else (axis.px1, axis.px0)
        return a + f * (b - a)
    if axis.kind == "log" and f is not None:  # Plotly places shapes and annotations on a log axis in log10
        return axis.px0 + (f - axis.lo) / ((axis.hi - axis.lo) or 1.0) * (axis.px1 - axis.px0)
    return axis.pos(v)


@dataclass(frozen=True)
class _Legend:
    label: str
    kind: str  # "marker", "line", "bar", "group"
    colour: str = ""
    symbol: str = "circle"
    dash: str = ""
    pattern: str = ""


def _legend_items(traces: list[_Trace], layout: Mapping[str, Any], colorway: Sequence[str]) -> list[_Legend]:
    shown = [t for t in traces if t.kind in ("scatter", "scattergl", "bar") and t.spec.get("showlegend") is not False]
    if layout.get("showlegend") is False or (len(shown) < 2 and layout.get("showlegend") is not True):
        return []
    out: list[_Legend] = []
    title = _text_of(_get(layout, "legend", "title"))
    if title:
        out.append(_Legend(title + ":", "group"))
    group = None
    for t in shown:
        g = _text_of(t.spec.get("legendgrouptitle"))
        if g and g != group:
            out.append(_Legend(g + ":", "group"))
            group = g
        name = str(t.spec.get("name") or f"trace {t.index}")
        marker = t.spec.get("marker") or {}
        if t.kind == "bar":
            shape = str(_at(_get(marker, "pattern", "shape"), 0) or "")
            out.append(_Legend(name, "bar", _colour(t, colorway, marker.get("color"), 0), pattern=shape))
        elif "markers" in str(t.spec.get("mode") or "lines+markers"):
            out.append(_Legend(name, "marker", _colour(t, colorway, marker.get("color"), 0),
                               str(_at(marker.get("symbol"), 0) or "circle")))
        else:
            line = t.spec.get("line") or {}
            out.append(_Legend(name, "line", str(line.get("color") or colorway[t.index % len(colorway)]),
                               dash=_DASHES.get(str(line.get("dash") or ""), "")))
    return out


def _layout_legend(items: list[_Legend], width: float, size: float) -> list[tuple[_Legend, float, int]]:
    """(item, x, row) for each legend item, wrapped into rows of `width`."""
    out = []
    x, row = 0.0, 0
    for item in items:
        w = _width(_plain(item.label), size) + (6 if item.kind == "group" else 30)
        if x > 0 and x + w > width:
            x, row = 0.0, row + 1
        out.append((item, x, row))
        x += w + 8
    return out


@dataclass
class _Frame:
    """Where things go: the plot box (inside the margins), the legend under it, the whole drawing's height."""

    left: float
    top: float
    right: float
    bottom: float
    height: float  # the figure's own height; the legend and the notes follow it
    total: float
    x_label_h: float
    rotate: dict[str, bool]
    legend: list[tuple[_Legend, float, int]]
    legend_size: float
    legend_h: float

    @property
    def plot(self) -> tuple[float, float, float, float]:
        return self.left, self.top, self.right, self.bottom


def _set_ticks(axes: dict[str, _Axis]) -> None:
    for axis in axes.values():
        suffix, prefix = str(axis.spec.get("ticksuffix") or ""), str(axis.spec.get("tickprefix") or "")
        lo, hi = sorted((axis.lo, axis.hi))
        if axis.kind == "category":
            axis.ticks = [(float(i), prefix + _plain(cat) + suffix) for i, cat in enumerate(axis.categories)]
        elif axis.kind == "log":
            axis.ticks = _log_ticks(lo, hi, suffix, prefix)
        else:
            axis.ticks = _linear_ticks(lo, hi, str(axis.spec.get("tickformat") or ""), suffix, prefix)


def _frame(layout: Mapping[str, Any], axes: dict[str, _Axis], visible: dict[str, _Axis], traces: list[_Trace],
           colorway: Sequence[str], n_notes: int) -> _Frame:
    """The margins, grown as Plotly's automargin grows them for tick labels, titles and a colour bar."""
    height = _num(layout.get("height")) or DEFAULT_HEIGHT
    m = {k: (DEFAULT_MARGIN[k] if (v := _num(_get(layout, "margin", k))) is None else v) for k in DEFAULT_MARGIN}
    title = _text_of(layout.get("title"))
    title_size = _num(_get(layout, "title", "font", "size")) or 17.0
    ys = [a for a in visible.values() if a.letter == "y"]
    xs = [a for a in visible.values() if a.letter == "x"]
    if ys:
        label_w = max((_width(label, TICK_SIZE) for a in ys if a.key == "yaxis" for _, label in a.ticks), default=0)
        has_title = any(_text_of(a.spec.get("title")) for a in ys if a.key == "yaxis")
        m["l"] = max(m["l"], label_w + 12 + (22 if has_title else 0))
    if any(t.kind == "heatmap" and t.spec.get("showscale") is not False for t in traces):
        m["r"] = max(m["r"], 80.0)
    if title:
        m["t"] = max(m["t"], title_size * 1.2 * len(_plain(title).split("\n")) + 22)
    plot_w = WIDTH - m["l"] - m["r"]
    # x tick labels turn 30° when they would overlap
    rotate: dict[str, bool] = {}
    x_label_h = 0.0
    for ax in xs:
        dom = [_num(v) for v in values(ax.spec.get("domain"))]
        share = (dom[1] or 0.0) - (dom[0] or 0.0) if len(dom) == 2 and dom[1] is not None else 1.0
        widest = max((_width(label, TICK_SIZE) for _, label in ax.ticks), default=0)
        band = plot_w * share / max(len(ax.ticks), 1)
        rotate[ax.key] = bool(ax.ticks) and widest + 6 > band
        x_label_h = max(x_label_h, widest * 0.5 + TICK_SIZE + 4 if rotate[ax.key] else TICK_SIZE * 1.4)
        if rotate[ax.key] and ax.kind == "category" and (not dom or (dom[0] or 0.0) == 0.0):
            # the first label, turned 30°, reaches left of its tick by cos 30° of its width
            m["l"] = max(m["l"], _width(ax.ticks[0][1], TICK_SIZE) * 0.87 - band / 2 + 8)
    if xs:
        m["b"] = max(m["b"], x_label_h + 10 + (22 if any(_text_of(a.spec.get("title")) for a in xs) else 0))
    legend_size = _num(_get(layout, "legend", "font", "size")) or 11.0
    legend = _layout_legend(_legend_items(traces, layout, colorway), WIDTH - 40, legend_size)
    legend_h = ((max(r for _, _, r in legend) + 1) * legend_size * 1.9 + 10) if legend else 0.0
    top, bottom = m["t"], height - m["b"]
    if bottom - top < 40:  # a figure too short for its margins still gets a plot area
        height += top + 40 - bottom
        bottom = top + 40
    frame = _Frame(m["l"], top, WIDTH - m["r"], bottom, height, height + legend_h + n_notes * 18 + 6, x_label_h,
                   rotate, legend, legend_size, legend_h)
    for axis in axes.values():
        dom = [_num(v) for v in values(axis.spec.get("domain"))] or [0.0, 1.0]
        d0, d1 = (dom[0] or 0.0), (dom[1] if len(dom) > 1 and dom[1] is not None else 1.0)
        if axis.letter == "x":
            p0, p1 = frame.left + d0 * (frame.right - frame.left), frame.left + d1 * (frame.right - frame.left)
        else:
            p0, p1 = frame.bottom - d0 * (frame.bottom - frame.top), frame.bottom - d1 * (frame.bottom - frame.top)
        if axis.hi < axis.lo:  # reversed: keep lo/hi ascending and swap the pixels instead
            axis.lo, axis.hi = axis.hi, axis.lo
            p0, p1 = p1, p0
        axis.px0, axis.px1 = p0, p1
    return frame


def _draw_axes(parts: list[str], axes: dict[str, _Axis], visible: dict[str, _Axis], frame: _Frame) -> None:
    """Grid lines, axis lines, tick labels and axis titles, under the data."""
    for axis in visible.values():
        other = axes.get(_axis_key(str(axis.spec.get("anchor") or ("y" if axis.letter == "x" else "x"))))
        title = _text_of(axis.spec.get("title"))
        ticks = [(axis.px0 + (u - axis.lo) / ((axis.hi - axis.lo) or 1.0) * (axis.px1 - axis.px0), label)
                 for u, label in axis.ticks]
        if axis.letter == "x":
            y0, y1 = (other.px0, other.px1) if other else (frame.bottom, frame.top)
            base, far = max(y0, y1), min(y0, y1)
            for px, label in ticks:
                if axis.kind != "category":
                    parts.append(f'<path d="M{_f(px)} {_f(base)}V{_f(far)}" stroke="{GRID_COLOR}"/>')
                if frame.rotate.get(axis.key):
                    parts.append(_text(px + 3, base + 8, label, TICK_SIZE, "end", rotate=-30, baseline="hanging"))
                else:
                    parts.append(_text(px, base + 6, label, TICK_SIZE, "middle", baseline="hanging"))
            parts.append(f'<path d="M{_f(min(axis.px0, axis.px1))} {_f(base)}H{_f(max(axis.px0, axis.px1))}" '
                         f'stroke="{AXIS_COLOR}"/>')
            if title:
                parts.append(_text((axis.px0 + axis.px1) / 2, base + frame.x_label_h + 12, title, 12.0, "middle",
                                   baseline="hanging"))
        else:
            x0, x1 = (other.px0, other.px1) if other else (frame.left, frame.right)
            base, far = min(x0, x1), max(x0, x1)
            for py, label in ticks:
                if axis.kind != "category":
                    parts.append(f'<path d="M{_f(base)} {_f(py)}H{_f(far)}" stroke="{GRID_COLOR}"/>')
                parts.append(_text(base - 6, py, label, TICK_SIZE, "end", baseline="middle"))
            parts.append(f'<path d="M{_f(base)} {_f(min(axis.px0, axis.px1))}V{_f(max(axis.px0, axis.px1))}" '
                         f'stroke="{AXIS_COLOR}"/>')
            if title:
                widest = max((_width(label, TICK_SIZE) for _, label in axis.ticks), default=0)
                parts.append(_text(base - widest - 16, (axis.px0 + axis.px1) / 2, title, 12.0, "middle",
                                   rotate=-90))


def _draw_data(c: _Canvas, traces: list[_Trace], axes: dict[str, _Axis], layout: Mapping[str, Any],
               colorway: Sequence[str]) -> tuple[float, float, list[tuple[float, str]], str] | None:
    """Every drawable trace, per subplot: heatmaps under bars under scatter. Returns a colour bar to draw."""
    colorbar = None
    for xa_name, ya_name in dict.fromkeys((t.xa, t.ya) for t in traces if t.kind in DRAWN):
        ax, ay = axes.get(_axis_key(xa_name)), axes.get(_axis_key(ya_name))
        if ax is None or ay is None:
            continue
        mine = [t for t in traces if (t.xa, t.ya) == (xa_name, ya_name) and t.kind in DRAWN]
        for t in mine:
            if t.kind == "heatmap":
                zlo, zhi, scale = _draw_heatmap(c, t, ax, ay, layout)
                if t.spec.get("showscale") is not False:
                    colorbar = (zlo, zhi, scale, _text_of(_get(t.spec, "colorbar", "title")))
        _draw_bars(c, [t for t in mine if t.kind == "bar"], axes, layout, traces, colorway)
        for t in mine:
            if t.kind in ("scatter", "scattergl"):
                _draw_scatter(c, t, ax, ay, colorway)
    return colorbar


def _draw_shapes(parts: list[str], layout: Mapping[str, Any], axes: dict[str, _Axis], frame: _Frame) -> None:
    """Reference lines (add_hline/add_vline) and boxes."""
    for s in layout.get("shapes") or []:
        kind = str(s.get("type") or "line")
        xr, yr = str(s.get("xref") or "x"), str(s.get("yref") or "y")
        x0, x1 = (_ref_pos(xr, s.get(k), axes, frame.plot, "x") for k in ("x0", "x1"))
        y0, y1 = (_ref_pos(yr, s.get(k), axes, frame.plot, "y") for k in ("y0", "y1"))
        if x0 is None or x1 is None or y0 is None or y1 is None or kind not in SHAPES:
            continue
        line = s.get("line") or {}
        width = _num(line.get("width"))
        dash = _DASHES.get(str(line.get("dash") or ""), "")
        stroke = (f'stroke="{line.get("color") or "#444"}" stroke-width="{_f(2 if width is None else width)}"'
                  + (f' stroke-dasharray="{dash}"' if dash else ""))
        if kind == "rect":
            opacity = _num(s.get("opacity"))
            parts.append(f'<rect x="{_f(min(x0, x1))}" y="{_f(min(y0, y1))}" width="{_f(abs(x1 - x0))}" '
                         f'height="{_f(abs(y1 - y0))}" fill="{s.get("fillcolor") or "none"}" {stroke}'
                         + (f' fill-opacity="{opacity}"' if opacity is not None else "") + "/>")
        else:
            parts.append(f'<path d="M{_f(x0)} {_f(y0)}L{_f(x1)} {_f(y1)}" {stroke}/>')


def _draw_annotations(parts: list[str], layout: Mapping[str, Any], axes: dict[str, _Axis], frame: _Frame) -> None:
    """Subplot titles, the labels of reference lines, empty-figure messages (arrows are left out)."""
    for a in layout.get("annotations") or []:
        text = str(a.get("text") or "")
        x = _ref_pos(str(a.get("xref") or "x"), a.get("x"), axes, frame.plot, "x")
        y = _ref_pos(str(a.get("yref") or "y"), a.get("y"), axes, frame.plot, "y")
        if not text or x is None or y is None:
            continue
        anchor = {"left": "start", "right": "end"}.get(str(a.get("xanchor") or "auto"), "middle")
        base = {"bottom": "bottom", "top": "hanging"}.get(str(a.get("yanchor") or "auto"), "middle")
        dy = -2 if base == "bottom" else 2 if base == "hanging" else 0
        if a.get("showarrow") not in (False, None):  # the text sits where Plotly puts the arrow's tail
            x += _num(a.get("ax")) or 0.0
            y += _num(a.get("ay")) or -30.0
        parts.append(_text(x, y + dy, text, _num(_get(a, "font", "size")) or 12.0, anchor,
                           str(_get(a, "font", "color") or TEXT_COLOR), baseline=base))


def _draw_colorbar(c: _Canvas, colorbar: tuple[float, float, list[tuple[float, str]], str], frame: _Frame) -> None:
    zlo, zhi, scale, title = colorbar
    gid = f"{c.ident}-g"
    stops = "".join(f'<stop offset="{_f(100 * (1 - s))}%" stop-color="{col}"/>' for s, col in reversed(scale))
    c.defs[gid] = f'<linearGradient id="{gid}" x1="0" y1="0" x2="0" y2="1">{stops}</linearGradient>'
    bx = frame.right + 16
    c.parts.append(f'<rect x="{_f(bx)}" y="{_f(frame.top)}" width="14" height="{_f(frame.bottom - frame.top)}" '
                   f'fill="url(#{gid})"/>')
    for v, py in ((zhi, frame.top), ((zlo + zhi) / 2, (frame.top + frame.bottom) / 2), (zlo, frame.bottom)):
        c.parts.append(_text(bx + 18, py, _tick_label(v, abs(zhi - zlo) / 4 or 1.0), 10.0, baseline="middle"))
    if title:
        c.parts.append(_text(bx, frame.top - 6, title, 11.0))


def _draw_legend(c: _Canvas, frame: _Frame) -> None:
    """The legend in rows under the plot: group titles in bold, then each entry's swatch and name."""
    size = frame.legend_size
    for item, x, row in frame.legend:
        px, py = 20 + x, frame.height + 8 + row * size * 1.9 + size
        if item.kind == "group":
            c.parts.append(_text(px, py, item.label, size, weight="600", baseline="middle"))
            continue
        if item.kind == "bar":
            fill = f"url(#{c.pattern(item.pattern, item.colour)})" if item.pattern else item.colour
            c.parts.append(f'<rect x="{_f(px + 4)}" y="{_f(py - 6)}" width="16" height="12" fill="{fill}"/>')
        elif item.kind == "marker":
            c.parts.append(_marker(item.symbol, px + 12, py, 10, item.colour, item.colour, 0, ""))
        else:
            c.parts.append(f'<path d="M{_f(px)} {_f(py)}H{_f(px + 24)}" stroke="{item.colour}" stroke-width="2"'
                           + (f' stroke-dasharray="{item.dash}"' if item.dash else "") + "/>")
        c.parts.append(_text(px + 28, py, item.label, size, baseline="middle"))


def figure_svg(figure: Mapping[str, Any], ident: str = "f") -> SvgFigure:
    """Draws a Plotly figure dict (`fig.to_dict()`) as one inline `<svg>` element.

    Args:
        figure: Plotly's JSON figure format: "data" (traces) and "layout".
        ident: a prefix for the ids this SVG defines (fill patterns, gradients), unique on the page.

    Returns:
        The SVG text (width 100% of its box, scaled from a WIDTH-unit drawing) and the notes for
        what it could not draw (a trace type outside DRAWN, a shape other than a line or a box),
        which the SVG also says in words.
    """
    figure = {"data": _decoded(list(figure.get("data") or [])), "layout": _decoded(figure.get("layout") or {})}
    layout: Mapping[str, Any] = figure["layout"]
    traces = _traces(figure)
    c = _Canvas(ident)
    colorway = values(layout.get("colorway")) or values(_get(layout, "template", "layout", "colorway")) \
        or list(DEFAULT_COLORWAY)
    c.notes += [f"a {t.kind} trace ({t.spec.get('name') or 'unnamed'})" for t in traces if t.kind not in DRAWN]
    c.notes += [f"a {kind} shape" for s in layout.get("shapes") or [] if (kind := str(s.get("type") or "line"))
                not in SHAPES]
    axes = _build_axes(figure, traces)
    _set_ticks(axes)  # first: the tick labels decide the margins
    visible = {k: a for k, a in axes.items() if a.spec.get("visible") is not False and (
        any(_axis_key(t.xa if a.letter == "x" else t.ya) == k for t in traces) or a.spec)}
    frame = _frame(layout, axes, visible, traces, colorway, len(c.notes))
    title = _text_of(layout.get("title"))
    if title:
        x = _num(_get(layout, "title", "x"))
        c.parts.append(_text((0.05 if x is None else x) * WIDTH, 14, title,
                             _num(_get(layout, "title", "font", "size")) or 17.0, weight="600", baseline="hanging"))
    _draw_axes(c.parts, axes, visible, frame)
    colorbar = _draw_data(c, traces, axes, layout, colorway)
    _draw_shapes(c.parts, layout, axes, frame)
    _draw_annotations(c.parts, layout, axes, frame)
    if colorbar is not None:
        _draw_colorbar(c, colorbar, frame)
    _draw_legend(c, frame)
    for k, note in enumerate(c.notes):
        c.parts.append(_text(20, frame.height + frame.legend_h + 14 + 18 * k,
                             f"Not drawn in this export: {note}.", 12.0, color="#B06000"))
    defs = f"<defs>{''.join(c.defs.values())}</defs>" if c.defs else ""
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {_f(frame.total)}" width="100%" '
           f'role="img" aria-label="{_esc(_plain(title) or "chart")}" font-family="{FONT}" fill="{TEXT_COLOR}" '
           f'style="max-width:100%;height:auto;display:block">{defs}'
           f'<rect width="{WIDTH}" height="{_f(frame.total)}" fill="#fff"/>' + "".join(c.parts) + "</svg>")
    return SvgFigure(svg, tuple(c.notes))
