"""Checks what Chromium made of the HTML run report (see chromium_test.sh).

Usage: check_report.py DOM.html SCREENSHOT.png TRACE.json

The run behind it has 14 stages: 10 restored from the cache, copy_6, sum_6
that ran, `bad` that failed with an error message full of HTML, and `after`
that never ran. Standard library only: html.parser for the DOM, zlib for
the PNG.
"""

import json
import struct
import sys
import zlib
from html.parser import HTMLParser


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


class Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows = []  # (classes, [cell texts])
        self.bars = []  # (classes, data-stages, title)
        self.scripts = 0
        self.lanes = 0
        self.ids = set()
        self.title = ""
        self._row = None
        self._cell = None
        self._bar = None
        self._in_title = False
        self._in_head_title = False
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        classes = set((a.get("class") or "").split())
        if tag == "head":
            self._in_head = True
        if tag == "script":
            self.scripts += 1
        elif tag == "tr":
            self._row = (classes, [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "rect" and "bar" in classes:
            self._bar = [classes, int(a.get("data-stages", "0")), ""]
        elif tag == "rect" and "lane" in classes:
            self.lanes += 1
        elif tag == "title":
            if self._bar is not None:
                self._in_title = True
            elif self._in_head:
                self._in_head_title = True

    def handle_endtag(self, tag):
        if tag == "head":
            self._in_head = False
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "title":
            self._in_title = False
            self._in_head_title = False
        elif tag == "rect" and self._bar is not None:
            self.bars.append(tuple(self._bar))
            self._bar = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title and self._bar is not None:
            self._bar[2] += data
        if self._in_head_title:
            self.title += data


def check_dom(path):
    dom = Dom()
    with open(path, encoding="utf-8") as f:
        dom.feed(f.read())
    if dom.scripts:
        fail(f"the DOM has {dom.scripts} <script> element(s): an error message was not escaped")
    if dom.title != "stagekit run: report-demo":
        fail(f"the page title is {dom.title!r}: the page was not rendered as expected")
    stages = [r for r in dom.rows if "stage" in r[0]]
    names = [r[1][1] for r in stages]
    expected = [f"copy_{k}" for k in range(1, 7)] + [f"sum_{k}" for k in range(1, 7)] + ["bad", "after"]
    if names != expected:
        fail(f"stage table rows {names}, expected {expected}")
    by_name = {r[1][1]: r for r in stages}
    cached = sorted(n for n, r in by_name.items() if "cached" in r[0])
    if cached != sorted([f"copy_{k}" for k in range(1, 6)] + [f"sum_{k}" for k in range(1, 6)]):
        fail(f"cached rows {cached}")
    if "failed" not in by_name["bad"][0] or by_name["bad"][1][3] != "failed":
        fail(f"the row of 'bad' is {by_name['bad']}")
    if by_name["after"][1][3] != "not_run":
        fail(f"the row of 'after' is {by_name['after']}")
    errors = [r for r in dom.rows if "errrow" in r[0]]
    if len(errors) != 1 or "<script>document.title='pwned'</script> & <b>friends</b>" not in errors[0][1][1]:
        fail(f"the error row should show the message as text: {errors}")
    drawn = sum(b[1] for b in dom.bars)
    if drawn != 13:
        fail(f"the SVG bars draw {drawn} stages, expected 13 (all but 'after')")
    kinds = {k: sum(b[1] for b in dom.bars if k in b[0]) for k in ("ok", "cached", "failed")}
    if kinds != {"ok": 2, "cached": 10, "failed": 1}:
        fail(f"bars by kind {kinds}, expected ran 2, cached 10, failed 1")
    if not all(b[2].strip() for b in dom.bars):
        fail("a bar has no tooltip")
    if dom.lanes != 2:
        fail(f"{dom.lanes} timeline lanes, expected 2 (the host's slot 0 and the cache's)")
    for section in ("run-summary", "run-timeline", "run-stages", "run-error"):
        if section not in dom.ids:
            fail(f"no #{section} in the DOM")
    if "cost" in dom.ids or "parity" in dom.ids:
        fail("cost or parity section without cost or parity data")
    return len(stages), drawn


def read_png(path):
    """(width, height, rows of RGB tuples) of an 8-bit RGB or RGBA PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail(f"{path} is not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace != 0:
        fail(f"unexpected PNG format: depth {depth}, colour type {colour}, interlace {interlace}")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(height):
        ftype = raw[i]
        line = bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 0xFF
            elif ftype == 2:
                line[x] = (line[x] + b) & 0xFF
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 0xFF
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, bpp)])
        prev = line
    return width, height, rows


def check_png(path):
    width, height, rows = read_png(path)
    if (width, height) != (1280, 1600):
        fail(f"screenshot is {width}x{height}, expected 1280x1600")
    counts = {}
    for row in rows:
        for px in row:
            counts[px] = counts.get(px, 0) + 1
    total = width * height
    white = counts.get((255, 255, 255), 0)
    if white > 0.97 * total:
        fail(f"the screenshot is blank: {white} of {total} pixels are white")
    if len(counts) < 32:
        fail(f"the screenshot has only {len(counts)} distinct colours")
    # The bar colours (the report's CSS): ran, cache hit, failed. Each shows
    # in its legend swatch (12x12) and in bars (16 px high, a failed one at
    # least 6 px wide): more than a swatch's worth.
    for name, rgb in (("ran", (0x3B, 0x73, 0xC8)), ("cache hit", (0x2E, 0x9D, 0x57)),
                      ("failed", (0xD2, 0x3C, 0x3C))):
        n = counts.get(rgb, 0)
        if n < 144 + 50:
            fail(f"{n} pixels of the '{name}' colour #{bytes(rgb).hex()}: its bars are not drawn")
    return len(counts), 1 - white / total


def check_trace(path):
    with open(path, encoding="utf-8") as f:
        trace = json.load(f)
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    if len(slices) != 13:
        fail(f"{len(slices)} trace slices, expected 13")
    cats = sorted(e["cat"] for e in slices)
    if cats.count("cached") != 10 or cats.count("failed") != 1:
        fail(f"trace categories {cats}")


def main():
    dom, png, trace = sys.argv[1:4]
    rows, bars = check_dom(dom)
    colours, ink = check_png(png)
    check_trace(trace)
    print(f"ok: {rows} table rows, {bars} stages in SVG bars, screenshot {colours} colours, "
          f"{ink:.1%} non-white")


if __name__ == "__main__":
    main()
