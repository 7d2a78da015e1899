"""The case viewer: one self-contained ``.html`` page per evaluation, and one comparing a sweep's children.

For every case of the evaluated split the page shows *image | truth | prediction* with the class overlays, a slice
slider, per-class toggles, an opacity slider and the case's per-class scores; cases are sorted by foreground mean
Dice, worst first (a selector sorts them otherwise). Everything is in the one file: the slices as base64 data URIs
(no network, no external script), so MLflow shows it inline as an artifact and it opens from a run folder too.

Compact by construction: each slice is downscaled to at most :data:`MAX_SIDE` pixels on its long side (labels
nearest); a case's images are tiled into one JPEG (context only: a third smaller than PNG), its truth and prediction
are one deflated byte array of class indices (PNG's compression; the browser inflates it with
``DecompressionStream`` and draws the overlays), and the page is capped at :data:`MAX_MB`: over the cap the worst
cases are kept and the page says which were left out. The labels are not a PNG because MLflow shows the page in a
sandboxed iframe (an opaque origin), where reading an image's pixels back from a canvas is refused.

:func:`comparison_page` combines the pages of a sweep's children (it reads the data each page embeds) into one page
with the same cases side by side: image | truth | every child's prediction.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

VIEWER_FILE = "case_viewer.html"
COMPARISON_FILE = "case_comparison.html"
#: Longest side of a slice in the page, in pixels.
MAX_SIDE = 256
#: Size cap of a page, in MB (10^6 bytes): a 200-case split stays a few MB.
MAX_MB = 8.0
JPEG_QUALITY = 85
_DATA_ID = "viewer-data"
_DATA_RE = re.compile(r'<script type="application/json" id="viewer-data">(.*?)</script>', re.S)


@dataclass(frozen=True)
class ViewerCase:
    """One case, encoded for the page: ``slices`` slices of ``height`` x ``width`` tiled ``columns`` to a row in
    the sprite ``image`` (JPEG data URI); ``labels``: base64 of the zlib-deflated class indices, ``uint8`` truth
    ``(slices, height, width)`` then prediction, C order; ``start``: the slice shown first (the one with the most
    foreground)."""

    name: str
    slices: int
    height: int
    width: int
    columns: int
    start: int
    image: str
    labels: str

    @property
    def nbytes(self) -> int:
        """Bytes the case adds to a page."""
        return len(self.image) + len(self.labels)


def _jpeg_uri(array: np.ndarray) -> str:
    """A grey ``(H, W)`` or BGR ``(H, W, 3)`` uint8 array as a JPEG data URI."""
    ok, encoded = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"could not encode a {array.shape} {array.dtype} array as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _tile(stack: np.ndarray, columns: int) -> np.ndarray:
    """``(S, h, w, ...)`` slices tiled row by row into one ``(rows * h, columns * w, ...)`` array (black filler)."""
    count, h, w = stack.shape[:3]
    rows = math.ceil(count / columns)
    sheet = np.zeros((rows * h, columns * w, *stack.shape[3:]), stack.dtype)
    for k in range(count):
        r, c = divmod(k, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = stack[k]
    return sheet


def encode_case(
    name: str, images: np.ndarray, truth: np.ndarray, prediction: np.ndarray, max_side: int = MAX_SIDE
) -> ViewerCase:
    """Encode one case's ``images`` ``(S, H, W)`` or ``(S, H, W, C)`` as stored (uint8, uint16; shown: 8 bits, the
    first of stacked windows) and class-index ``truth`` and ``prediction`` ``(S, H, W)``, each slice downscaled to
    at most ``max_side`` pixels on its long side."""
    count, height, width = truth.shape
    scale = min(1.0, max_side / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    images = images if images.ndim == 4 else images[..., None]
    if images.dtype == np.uint16:  # a 16-bit slice shows its high byte (display only)
        images = (images >> 8).astype(np.uint8)
    if images.shape[-1] not in (1, 3):  # stacked windows: the first one
        images = images[..., :1]
    if images.shape[-1] == 1 or all(np.array_equal(i[..., 0], i[..., c]) for i in images for c in (1, 2)):
        grey = images[..., 0]
    else:
        grey = None
    small_images, small_labels = [], []
    for k in range(count):
        picture = grey[k] if grey is not None else images[k][..., ::-1]  # OpenCV writes BGR
        small_images.append(cv2.resize(picture, (w, h), interpolation=cv2.INTER_AREA) if scale < 1 else picture)
        pair = np.stack([truth[k], prediction[k]], axis=-1).astype(np.uint8)
        small_labels.append(cv2.resize(pair, (w, h), interpolation=cv2.INTER_NEAREST) if scale < 1 else pair)
    columns = max(1, math.ceil(math.sqrt(count)))
    foreground = [(int((t > 0).sum()) + int((p > 0).sum())) for t, p in zip(truth, prediction)]
    return ViewerCase(
        name=name,
        slices=count,
        height=h,
        width=w,
        columns=columns,
        start=int(np.argmax(foreground)) if foreground else 0,
        image=_jpeg_uri(_tile(np.stack(small_images), columns)),
        labels=base64.b64encode(zlib.compress(np.moveaxis(np.stack(small_labels), -1, 0).tobytes(), 9)).decode(),
    )


def foreground_dice(scores: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The mean Dice of a case's classes that are present in truth or prediction (None: none is)."""
    values = [s["dice"] for s in scores.values() if s.get("dice") is not None and not math.isnan(s["dice"])]
    return float(np.mean(values)) if values else None


def _worst_first(value: float | None) -> tuple[bool, float]:
    return (value is None, value if value is not None else 0.0)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class _Block:
    """One case's section of a page: its sprites, panels and score table."""

    name: str
    dice: float | None  # the sort key: foreground mean Dice
    entry: dict[str, Any]  # the case's data for the script
    panels: list[str]  # panel titles
    header: list[str]  # score table columns, after the class
    rows: list[list[str]]  # per class: its cells
    nbytes: int


def _keep_within(blocks: list[_Block], max_mb: float, base: int) -> tuple[list[_Block], list[_Block]]:
    """The worst blocks that fit ``max_mb`` with ``base`` bytes of page around them, and those left out."""
    budget, used = int(max_mb * 1e6) - base, 0
    for i, block in enumerate(blocks):
        if used + block.nbytes > budget:
            return blocks[:i], blocks[i:]
        used += block.nbytes
    return blocks, []


def viewer_page(
    cases: Sequence[ViewerCase],
    per_case: Mapping[str, Mapping[str, Mapping[str, Any]]],
    class_names: Sequence[str],
    colours: np.ndarray,
    *,
    title: str,
    hd95_units: str = "px",
    max_mb: float = MAX_MB,
) -> str:
    """The page of one evaluation: ``cases`` (from :func:`encode_case`), their scores ``per_case``
    (``{case: {class: {"dice", "iou", "hd95", "nsd", "assd", ...}}}``, as ``summary.json``), the foreground
    ``class_names``'
    ``colours`` (a row per class, background first), worst case first, at most ``max_mb``."""
    blocks = []
    for case in cases:
        scores = per_case.get(case.name, {})
        entry = _case_entry(case, [case.labels], [[-1, 0], [0, 0], [0, 1]])
        entry["scores"] = {"fg_dice": foreground_dice(scores), "dice": {n: s.get("dice") for n, s in scores.items()}}
        rows = [
            [
                _fmt(s.get("dice")),
                _fmt(s.get("iou")),
                _fmt(s.get("hd95"), 1),
                _fmt(s.get("nsd")),
                _fmt(s.get("assd"), 1),
            ]
            for s in scores.values()
        ]
        blocks.append(
            _Block(
                case.name,
                foreground_dice(scores),
                entry,
                ["image", "truth", "prediction"],
                ["Dice", "IoU", f"HD95 ({hd95_units})", "NSD", f"ASSD ({hd95_units})"],
                [[n, *r] for n, r in zip(scores, rows)],
                case.nbytes,
            )
        )
    return _page(blocks, class_names, colours, title=title, max_mb=max_mb)


def _case_entry(case: ViewerCase, labels: list[str], panels: list[list[int]]) -> dict[str, Any]:
    return {
        "name": case.name,
        "n": case.slices,
        "h": case.height,
        "w": case.width,
        "cols": case.columns,
        "start": case.start,
        "image": case.image,
        "labels": labels,
        "panels": panels,  # [index into labels (-1: the image alone), channel: 0 truth, 1 prediction]
    }


def page_data(page: str) -> dict[str, Any] | None:
    """The data a page of this module embeds (None: not such a page)."""
    found = _DATA_RE.search(page)
    return json.loads(found.group(1)) if found else None


def comparison_page(children: Sequence[tuple[str, str]], *, title: str, max_mb: float = MAX_MB) -> str | None:
    """One page with the cases of a sweep's children side by side: ``children`` are ``(run name, its viewer
    page)``; the cases every page holds are shown as image | truth | each child's prediction, with each child's
    Dice per class, worst (by the children's mean foreground Dice) first. Each child's page keeps its own worst
    cases under its cap, so only the cases of the first page that every page holds are shown (the page says how
    many are not). None when no page holds viewer data."""
    runs = [(name, data) for name, page in children if (data := page_data(page)) is not None]
    if not runs:
        return None
    first = runs[0][1]
    by_run = [{c["name"]: c for c in data["cases"]} for _, data in runs]
    shared = [c for c in first["cases"] if all(c["name"] in cases for cases in by_run)]
    blocks = []
    for case in shared:
        versions = [cases[case["name"]] for cases in by_run]
        if any(
            (v["n"], v["h"], v["w"], v["cols"]) != (case["n"], case["h"], case["w"], case["cols"]) for v in versions
        ):
            continue  # the children read the case differently (another dataset): nothing to put side by side
        panels = [[-1, 0], [0, 0], *[[j, 1] for j in range(len(versions))]]
        entry = {**case, "labels": [v["labels"][0] for v in versions], "panels": panels}
        fg = [v["scores"]["fg_dice"] for v in versions]
        known = [d for d in fg if d is not None]
        entry["scores"] = {"fg_dice": float(np.mean(known)) if known else None}
        classes = list(versions[0]["scores"]["dice"])
        rows = [[n, *(_fmt(v["scores"]["dice"].get(n)) for v in versions)] for n in classes]
        rows.append(["foreground", *(_fmt(d) for d in fg)])
        nbytes = len(case["image"]) + sum(len(label) for label in entry["labels"])
        names = [name for name, _ in runs]
        blocks.append(
            _Block(case["name"], entry["scores"]["fg_dice"], entry, ["image", "truth", *names], names, rows, nbytes)
        )
    classes = first["classes"]
    colours = np.array([[0, 0, 0], *(c["colour"] for c in classes)], np.uint8)
    note = (
        ""
        if len(shared) == len(first["cases"])
        else f"{len(first['cases']) - len(shared)} cases are not in every child's page. "
    )
    return _page(blocks, ["background", *(c["name"] for c in classes)], colours, title=title, max_mb=max_mb, note=note)


def _page(
    blocks: list[_Block],
    class_names: Sequence[str],
    colours: np.ndarray,
    *,
    title: str,
    max_mb: float,
    note: str = "",
) -> str:
    blocks = sorted(blocks, key=lambda b: _worst_first(b.dice))
    kept, left = _keep_within(blocks, max_mb, base=len(_SCRIPT) + len(_STYLE) + 2000 * (len(blocks) + 1))
    names = [str(n) for n in class_names[1:]]
    rgbs = [[int(v) for v in colours[k + 1]] for k in range(len(names))]
    data = {"classes": [{"name": n, "colour": c} for n, c in zip(names, rgbs)], "cases": [b.entry for b in kept]}
    toggles = "".join(
        f'<label><input type="checkbox" class="class-toggle" data-class="{k + 1}" checked>'
        f'<span class="swatch" style="background:rgb({",".join(map(str, rgb))})"></span>'
        f"{html.escape(name)}</label>"
        for k, (name, rgb) in enumerate(zip(names, rgbs))
    )
    cap = f"Size cap {max_mb:g} MB"
    if left:
        out = ", ".join(f"{html.escape(b.name)} ({_fmt(b.dice)})" for b in left)
        cap += f": {len(left)} of {len(blocks)} cases left out (the best ones): {out}"
    else:
        cap += f": all {len(blocks)} cases shown"
    sections = "".join(_section(i, b) for i, b in enumerate(kept))
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        '<div class="controls">'
        f'<span class="toggles">{toggles}</span>'
        '<label>opacity <input type="range" id="opacity" min="0" max="100" value="45"></label>'
        '<label>sort <select id="sort"><option value="worst">worst first</option>'
        '<option value="best">best first</option><option value="name">by name</option></select></label>'
        "</div>"
        f'<p class="note">{html.escape(note)}Cases by foreground mean Dice. {cap}.</p>'
        f'<div id="cases">{sections}</div>'
        f'<script type="application/json" id="{_DATA_ID}">{payload}</script>'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def _section(index: int, block: _Block) -> str:
    n = block.entry["n"]
    figures = "".join(
        f'<figure><figcaption>{html.escape(t)}</figcaption><canvas class="panel"></canvas></figure>'
        for t in block.panels
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["class", *block.header])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
    return (
        f'<section class="case" data-index="{index}" data-name="{html.escape(block.name)}" '
        f'data-dice="{"" if block.dice is None else block.dice}">'
        f"<h2>{html.escape(block.name)} <small>foreground Dice {_fmt(block.dice)} · {n} slices</small></h2>"
        f'<div class="row"><div class="panels">{figures}</div>'
        f'<table class="scores"><tr>{head}</tr>{body}</table></div>'
        f'<label>slice <input type="range" class="slice-slider" min="0" max="{n - 1}" '
        f'value="{block.entry["start"]}"> <span class="slice-label"></span></label></section>'
    )


_STYLE = """
body{font:14px sans-serif;margin:12px;background:#fafafa;color:#222}
.controls{position:sticky;top:0;background:#fafafa;padding:6px 0;border-bottom:1px solid #ccc;z-index:1}
.controls label{margin-right:14px}
.swatch{display:inline-block;width:11px;height:11px;margin:0 3px;border:1px solid #555}
.case{border-bottom:1px solid #ddd;padding:8px 0}
.case h2{font-size:15px;margin:4px 0}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.panels{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0}
figcaption{font-size:12px;max-width:256px;overflow-wrap:anywhere}
canvas.panel{width:min(256px,28vw);image-rendering:pixelated;background:#000}
.scores{border-collapse:collapse;font-size:12px}
.scores td,.scores th{border:1px solid #ccc;padding:2px 6px;text-align:right}
.slice-slider{width:300px;vertical-align:middle}
.note{color:#555}
"""

# Hand-written on purpose: MLflow shows an .html artifact inline (in an iframe), and no well-kept library emits a
# self-contained segmentation viewer (no network, no external script); this needs nothing but the browser.
_SCRIPT = """
(function () {
  var D = JSON.parse(document.getElementById('viewer-data').textContent);
  var enabled = D.classes.map(function () { return true; });
  var opacity = 0.45;
  var loaded = {}, shown = {};
  var layer = document.createElement('canvas');  // one overlay at a time, drawn over the image
  function inflate(text) {  // base64 of zlib-deflated bytes -> Uint8Array
    var raw = atob(text), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
    return new Response(stream).arrayBuffer().then(function (b) { return new Uint8Array(b); });
  }
  function load(section) {
    var i = +section.dataset.index, c = D.cases[i];
    if (loaded[i]) return loaded[i];
    var state = {ready: false};
    loaded[i] = state;
    var image = new Promise(function (ok, fail) {
      var im = new Image(); im.onload = function () { ok(im); }; im.onerror = fail; im.src = c.image;
    });
    if (!window.DecompressionStream) {
      section.querySelector('.slice-label').textContent = 'this browser cannot inflate the labels';
      return state;
    }
    Promise.all([image].concat(c.labels.map(inflate))).then(function (parts) {
      state.image = parts[0]; state.labels = parts.slice(1); state.ready = true; draw(section);
    }).catch(function (err) { section.querySelector('.slice-label').textContent = 'cannot show the case: ' + err; });
    return state;
  }
  function draw(section) {
    var i = +section.dataset.index, c = D.cases[i], state = load(section);
    var k = +section.querySelector('.slice-slider').value, size = c.w * c.h;
    section.querySelector('.slice-label').textContent = (k + 1) + ' / ' + c.n;
    shown[i] = section;
    if (!state.ready) return;
    layer.width = c.w; layer.height = c.h;
    var lg = layer.getContext('2d'), alpha = Math.round(255 * opacity);
    section.querySelectorAll('canvas.panel').forEach(function (canvas, p) {
      var li = c.panels[p][0], ch = c.panels[p][1];
      canvas.width = c.w; canvas.height = c.h;
      var g = canvas.getContext('2d');
      g.drawImage(state.image, (k % c.cols) * c.w, Math.floor(k / c.cols) * c.h, c.w, c.h, 0, 0, c.w, c.h);
      if (li < 0) return;
      var lab = state.labels[li], start = (ch * c.n + k) * size;
      var out = lg.createImageData(c.w, c.h), o = out.data;
      for (var q = 0; q < size; q++) {
        var v = lab[start + q];
        if (v > 0 && v <= enabled.length && enabled[v - 1]) {
          var col = D.classes[v - 1].colour;
          o[4 * q] = col[0]; o[4 * q + 1] = col[1]; o[4 * q + 2] = col[2]; o[4 * q + 3] = alpha;
        }
      }
      lg.putImageData(out, 0, 0);
      g.drawImage(layer, 0, 0);
    });
  }
  function redraw() { Object.keys(shown).forEach(function (i) { draw(shown[i]); }); }
  var sections = Array.prototype.slice.call(document.querySelectorAll('section.case'));
  sections.forEach(function (s) {
    s.querySelector('.slice-slider').addEventListener('input', function () { draw(s); });
  });
  if ('IntersectionObserver' in window) {
    var seen = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting) { draw(e.target); seen.unobserve(e.target); } });
    }, {rootMargin: '300px'});
    sections.forEach(function (s) { seen.observe(s); });
  } else {
    sections.forEach(draw);
  }
  document.querySelectorAll('.class-toggle').forEach(function (box) {
    box.addEventListener('change', function () { enabled[+box.dataset.class - 1] = box.checked; redraw(); });
  });
  document.getElementById('opacity').addEventListener('input', function (e) {
    opacity = +e.target.value / 100; redraw();
  });
  document.getElementById('sort').addEventListener('change', function (e) {
    var how = e.target.value, none = how === 'best' ? -Infinity : Infinity;  // cases without a score go last
    function dice(s) { return s.dataset.dice === '' ? none : +s.dataset.dice; }
    var order = sections.slice().sort(function (a, b) {
      if (how === 'name') return a.dataset.name < b.dataset.name ? -1 : 1;
      return (how === 'best' ? dice(b) - dice(a) : dice(a) - dice(b)) || 0;
    });
    var box = document.getElementById('cases');
    order.forEach(function (s) { box.appendChild(s); });
  });
})();
"""
