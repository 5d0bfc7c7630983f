"""Markup of the report: index, one page per image, the data-set quality page.

Every page is one self-contained HTML file: inline CSS, one small inline script, pictures as
PNG files beside it under relative links, charts as inline SVG; nothing is fetched from a
network. Pages are built from the same dictionaries that go into ``report.json``, so every
number on a page is in the JSON too.

Markup that outside checks rely on: each detection's section on an image page is
``<section data-detection="N">`` with N from 0 in ``crp-jax detect``'s order; each error case
(images with ground truth) is ``<section data-error="KIND">``, KIND one of ``missed``,
``false_alarm``, ``wrong_label``, ``duplicate`` (``cj.diagnose``'s cases; the index's counts
carry no such attribute, so counting it over the image pages counts every case once). The inline
script records, once the page has loaded, JavaScript errors, ``console.error`` calls and
pictures that did not decode (``naturalWidth == 0``) as JSON in attributes of ``<html>``
(``data-check-errors``, ``data-check-broken-images``, ``data-check-images``) and whether the
page is wider than the window (``data-check-overflow``), so that a headless browser's
``--dump-dom`` can read them.

Accessibility basics: ``lang``, a viewport, alt text on every picture, one ``h1`` and
headings in order (h1 page, h2 parts and detections, h3 within a detection), tables with
header cells, charts with ``role="img"`` and a text description; the layout wraps to one
column on a narrow window and wide tables scroll inside their own box.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from crp_jax.relevance.composite import method_title
from crp_jax.report.build import LOC_QUESTIONS, loc_key
from crp_jax.report.errors import KIND_TITLES
from crp_jax.report.figures import flow_svg, interval_svg

CSS = """
:root { color-scheme: light; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  line-height: 1.45; color: #1a1a1a; background: #fff; }
body { margin: 0 auto; max-width: 1240px; padding: 12px 20px 40px; }
h1 { font-size: 1.6rem; margin: .4em 0 .2em; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin: 1.2em 0 .4em; }
h3 { font-size: 1.02rem; margin: 1em 0 .3em; }
a { color: #0b57a4; }
nav { font-size: .95rem; }
img { max-width: 100%; height: auto; display: block; }
.pix { image-rendering: pixelated; }
.lede { color: #444; margin: 0 0 .6em; }
.top { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.top figure { width: 384px; flex: 0 0 auto; }
.top > div { flex: 1 1 320px; min-width: 0; }
.maps { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; max-width: 100%; }
figure.cls { width: 256px; }
figure.loc { width: 132px; }
figure.kp { width: 168px; }
figcaption { font-size: .84rem; color: #333; margin-top: 3px; }
figcaption b { color: #111; }
.scale { color: #666; font-size: .78rem; }
section.det { border-top: 3px solid #d0d0d0; margin-top: 28px; padding-top: 4px; }
.legend { display: flex; align-items: center; gap: 8px; flex-wrap: wrap; font-size: .9rem; }
.legend img { width: 200px; height: 14px; border: 1px solid #999; }
.against { color: #2166ac; font-weight: 600; } .for { color: #b2182b; font-weight: 600; }
.tablewrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .88rem; margin: .3em 0; }
th, td { padding: 3px 9px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #999; }
svg.chart { width: 100%; max-width: 640px; height: auto; display: block; }
svg.chart.small { max-width: 340px; }
svg .ct { font: 600 12px sans-serif; fill: #111; } svg .tk { font: 10px sans-serif; fill: #333; }
svg .ax { stroke: #444; stroke-width: 1; } svg .gr { stroke: #e6e6e6; stroke-width: 1; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 18px; }
.card { border: 1px solid #d6d6d6; border-radius: 6px; padding: 10px; }
.card h2 { font-size: .95rem; margin: .5em 0 .2em; overflow-wrap: break-word; }
.card p { margin: .2em 0; font-size: .9rem; }
.failed code { overflow-wrap: anywhere; }
td.links, th.links { white-space: normal; text-align: left; }
section.err { border-left: 4px solid #e0b000; padding-left: 10px; margin-top: 18px; }
ol.dets { padding-left: 1.4em; margin: .3em 0; } ol.dets li { margin: .15em 0; }
@media (max-width: 640px) {
  body { padding: 8px 10px 30px; }
  .top figure, figure.cls { width: 100%; }
  figure.loc { width: calc(50% - 7px); }
}
"""

# Self-check for automated tests (see the module docstring); registered before any picture
# loads, so a picture that fails is recorded too.
CHECK_JS = """
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t.tagName === "IMG") { errors.push("picture failed: " + t.getAttribute("src")); }
    else { errors.push(String(e.message || "error")); }
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("rejection: " + String(e.reason)); });
  var original = console.error;
  console.error = function () { errors.push(Array.prototype.join.call(arguments, " ")); return original.apply(console, arguments); };
  window.addEventListener("load", function () {
    var imgs = document.images, broken = [];
    for (var i = 0; i < imgs.length; i++) {
      if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) { broken.push(imgs[i].getAttribute("src")); }
    }
    var d = document.documentElement;
    d.setAttribute("data-check-errors", JSON.stringify(errors));
    d.setAttribute("data-check-broken-images", JSON.stringify(broken));
    d.setAttribute("data-check-images", String(imgs.length));
    d.setAttribute("data-check-overflow", String(d.scrollWidth > window.innerWidth + 1));
  });
})();
"""


def document(title: str, body: str) -> str:
    """A whole HTML page around ``body``."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="crp-jax report">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n<script>{CHECK_JS}</script>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def fmt(v, digits: int = 3) -> str:
    """A number as the pages print it (the JSON keeps full precision)."""
    if v is None:
        return "–"
    v = float(v)
    if v != v:
        return "n/a"
    if v == 0.0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.{max(1, digits - 1)}e}"
    return f"{v:.{digits}g}"


def _img(pic: dict, alt: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<img src="{escape(pic["src"])}" width="{pic["w"]}" height="{pic["h"]}" alt="{escape(alt)}"{c}>'


def legend_html(src: str) -> str:
    """The colour scale with its words (one scale for every map of the report)."""
    return (
        '<div class="legend"><span class="against">against −</span>'
        f'<img src="{escape(src)}" width="256" height="14" alt="colour scale: blue (against) through white (zero) '
        'to red (for)"><span class="for">+ for</span></div>\n'
        '<p class="lede">Red: relevance <b>for</b> the question asked (it supports the class, or pushes the box '
        "that way); blue: <b>against</b> it; no colour: none. The image is shown in grey so that colour belongs "
        "to relevance only. Each map has its own scale: full colour at its 99.5th percentile of |R| "
        "(printed under the map), so compare colours within a map and the printed numbers across maps. "
        "The green frame is the detection's box.</p>"
    )


# ---- image page ----------------------------------------------------------------------------


def _map_title(name: str, d: dict) -> str:
    k = d["class"]
    k2 = (d.get("runner_up") or {}).get("class")
    if name == "crp" and len(d["logits"]) == 1:  # a single sigmoid logit: "others" is "not k"
        return f"CRP: why {k} and not 'not {k}' (the logit itself)"
    if name == "crp":
        return f"CRP: why {k} and not any other class"
    if name == "crp_pair":
        return f"CRP: why {k} and not {k2} (the runner-up)"
    title = method_title(name)
    return f"{title}: {k} (no contrast)" if name == "lrp_ab" else f"{title}: {k}"


def _figure(d: dict, name: str, caption: str, cls: str) -> str:
    pic = d["maps"][name]
    scale = f'<br><span class="scale">full colour at |R| = {fmt(d["scale"][name])}</span>'
    return f'<figure class="{cls}">{_img(pic, caption)}<figcaption>{escape(caption)}{scale}</figcaption></figure>'


def _numbers_table(d: dict) -> str:
    names = [n for n in d["class_maps"] if n in d["sum"]]
    head = "<tr><th>map</th><th>Σ R</th><th>expected Σ R</th><th>conservation error</th>"
    head += "<th>share of positive R in the box</th><th>max |R|</th></tr>"
    rows = []
    for n in names:
        c = d["conservation"].get(n)
        rows.append(
            f"<tr><td>{escape(_map_title(n, d))}</td><td>{fmt(d['sum'][n])}</td>"
            f"<td>{fmt(c['initial']) if c else '–'}</td>"
            f"<td>{fmt(c['relative_error']) if c else 'no conservation law'}</td>"
            f"<td>{fmt(d['positive_share_in_box'][n])}</td><td>{fmt(d['max_abs'][n])}</td></tr>"
        )
    table = f'<div class="tablewrap"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'
    note = (
        '<p class="lede">Conservation error: |Σ R − expected| divided by the expected total (1 for a one-hot '
        "target) or, for a contrast (expected 0), by Σ|R|. Share in the box: positive relevance inside the "
        "detected box over all positive relevance.</p>"
    )
    r = d.get("class_pair_r") or {}
    if r:
        k, k2 = d["class"], d["runner_up"]["class"]
        parts = ", ".join(f"{method_title(m)} <b>{v:.3f}</b>" for m, v in r.items())
        note += (
            f"<p>Class-pair correlation (Pearson r, whole image) between the heatmaps of {escape(k)} and of "
            f"{escape(k2)} for this box: {parts}. Near 1: the method draws the same map whichever class is "
            "asked; lower: it tells the two classes apart.</p>"
        )
    return table + note


def _keypoint_part(d: dict) -> str:
    """The keypoint maps of a detector with keypoints (BlazeFace): the face with its predicted
    keypoints, then per keypoint regressor "what moves it right" (x) or "down" (y), each
    figure ``<figure data-regressor="nose_tip_x">`` with the keypoint marked by a square."""
    out = ["<h3>Keypoints: what moves each one right or down</h3>"]
    out.append(
        '<p class="lede">CRP, +1 at each keypoint regressor of this detection (alpha1beta1 at the '
        "head): red pushes the keypoint right (x) or down (y), blue pushes it the other way. The square "
        "marks the predicted keypoint; the pictures show the region around the face.</p>"
    )
    out.append('<div class="maps">')
    kps = ", ".join(f"{n.replace('_', ' ')} ({v[0]:.0f}, {v[1]:.0f})" for n, v in d["keypoints"].items())
    face = d["keypoint_face"]
    out.append(
        f'<figure class="kp">{_img(face, "the face with its predicted keypoints")}'
        f"<figcaption>predicted keypoints (x, y px): {escape(kps)}</figcaption></figure>"
    )
    for m in d["keypoint_maps"]:
        r, name = m["regressor"], m["map"]
        point, axis = r.rsplit("_", 1)
        caption = f"what moves the {point.replace('_', ' ')} {'right' if axis == 'x' else 'down'}"
        fig = _figure(d, name, caption, "kp")
        out.append(fig.replace('<figure class="kp">', f'<figure class="kp" data-regressor="{escape(r)}">', 1))
    out.append("</div>")
    return "\n".join(out)


def _detection_section(d: dict, titles: dict) -> str:
    i, k, score = d["detection"], d["class"], d["score"]
    box = ", ".join(f"{v:.1f}" for v in d["box"])
    ru = d.get("runner_up")
    ru_text = (
        f"; runner-up class {escape(ru['class'])} (logit {fmt(ru['logit'])} against {fmt(d['logits'][k])} for {escape(k)})"
        if ru
        else "; no other foreground class to contrast with"
    )
    out = [f'<section class="det" id="det-{i}" data-detection="{i}">']
    out.append(f"<h2>#{i} · {escape(k)} · score {score:.3f}</h2>")
    out.append(f'<p class="lede">Box (x1, y1, x2, y2) = ({box}) px, anchor {d["anchor"]}{ru_text}.</p>')
    out.append(f"<h3>Class: why {escape(k)}?</h3>")
    out.append('<div class="maps">')
    out += [_figure(d, n, _map_title(n, d), "cls") for n in d["class_maps"]]
    out.append("</div>")
    out.append("<h3>Box: what moves it</h3>")
    out.append('<div class="maps">')
    for coord, sign, word in LOC_QUESTIONS:
        out.append(_figure(d, loc_key(coord, sign), f"what moves the box {word}", "loc"))
    out.append("</div>")
    if d.get("keypoint_maps"):
        out.append(_keypoint_part(d))
    if "flow" in d:
        f = d["flow"]
        series = {m: {"abs": f[m]["abs"], "total": f[m]["total"]} for m in f if m != "layers"}
        out.append("<h3>Relevance flow through the layers</h3>")
        lrp = " LRP-ab keeps Σ R = 1 at every layer;" if "lrp_ab" in series else ""
        out.append(
            '<p class="lede">Relevance of the class question at each layer, from the input (left) to the '
            f"detection head (right); layers that carry none for this box are left out.{lrp} CRP's contrast "
            "sums to 0 while Σ|R| shows how much evidence flows.</p>"
        )
        out.append(flow_svg(f["layers"], series, titles))
    out.append("<h3>Numbers</h3>")
    out.append(_numbers_table(d))
    out.append('<p><a href="#top">back to the top</a></p>')
    out.append("</section>")
    return "\n".join(out)


def image_page(entry: dict, settings: dict, legend_src: str) -> str:
    """The page of one image: overview with numbered boxes, then one section per detection."""
    dets = entry["detections"]
    n = len(dets)
    titles = {m: method_title(m) for m in settings["methods"]}
    body = ['<header id="top"><nav><a href="../index.html">← all images</a></nav>']
    body.append(f"<h1>{escape(entry['name'])}</h1>")
    body.append(
        f'<p class="lede">{entry["width"]}×{entry["height"]} px · {n} detection{"s" if n != 1 else ""} with '
        f"score ≥ {settings['score_threshold']} (at most {settings['max_detections']}), numbered in the order "
        f"<code>crp-jax detect</code> prints them · source: <code>{escape(entry['source'])}</code></p></header>"
    )
    body.append("<main>")
    body.append("<h2>Detections</h2>")
    body.append('<div class="top">')
    alt = f"{entry['name']} with {n} numbered detection boxes"
    body.append(
        f"<figure>{_img(entry['overview'], alt)}"
        "<figcaption>Every detection, boxed and numbered (#0 = highest score).</figcaption></figure>"
    )
    if n:
        items = "".join(
            f'<li><a href="#det-{d["detection"]}">#{d["detection"]} {escape(d["class"])}</a> score {d["score"]:.3f}</li>'
            for d in dets
        )
        body.append(f'<div><ol class="dets" start="0">{items}</ol>{legend_html(legend_src)}</div>')
    else:
        body.append(f"<p>No detection with score ≥ {settings['score_threshold']}: nothing to explain.</p>")
    body.append("</div>")
    if "annotated" in entry:
        body.append(_errors_part(entry, legend_src))
    body += [_detection_section(d, titles) for d in dets]
    body.append("</main>")
    return document(f"{entry['name']} · crp-jax report", "\n".join(body))


def _errors_part(entry: dict, legend_src: str) -> str:
    """The image's errors against its ground truth: one ``data-error`` section per case."""
    out = ['<h2 id="errors">Errors against the ground truth</h2>']
    if not entry["annotated"]:
        out.append(
            f"<p>Not annotated: {escape(entry['annotation_note'])}. Its detections are not judged (an image "
            "without annotations is not an image without objects).</p>"
        )
        return "\n".join(out)
    cases = entry["errors"]
    if not cases:
        out.append("<p>No error: every object found once, with its class, and no box on nothing.</p>")
        return "\n".join(out)
    counts = ", ".join(f"{n} {KIND_TITLES[k]}" for k, n in entry["error_counts"].items() if n)
    out.append(
        f'<p class="lede">{counts}. Maps by CRP, one per question; a dashed box is the missed object or the box '
        "that lost, a solid one the box that was detected or kept.</p>"
    )
    if not entry["detections"]:  # otherwise the legend is shown above already
        out.append(legend_html(legend_src))
    for c in cases:
        out.append(f'<section class="err" id="err-{c["index"]}" data-error="{escape(c["kind"])}">')
        out.append(f"<h3>{escape(c['title'])}</h3>")
        out.append(f'<p class="lede">{escape(c["text"])}</p>')
        out.append('<div class="maps">')
        for q in c["questions"]:
            pic = c["maps"][q["key"]]
            scale = f'<br><span class="scale">full colour at |R| = {fmt(c["scale"][q["key"]])}</span>'
            out.append(
                f'<figure class="cls">{_img(pic, q["title"])}<figcaption>{escape(q["title"])}{scale}</figcaption></figure>'
            )
        out.append("</div></section>")
    return "\n".join(out)


def _errors_summary(entries: Sequence[dict]) -> str:
    """Index: error counts per kind with links to the images' errors."""
    judged = [e for e in entries if "annotated" in e]
    if not judged:
        return ""
    annotated = [e for e in judged if e["annotated"]]
    out = ['<h2 id="errors">Errors against the ground truth</h2>']
    out.append(
        f'<p class="lede">{len(annotated)} of {len(judged)} images have ground truth; errors as '
        "<code>cj.diagnose</code> finds them (VOC matching at IoU 0.5, the report's score threshold).</p>"
    )
    rows = []
    for k, title in KIND_TITLES.items():
        found = [(e, e["error_counts"][k]) for e in annotated if e["error_counts"].get(k)]
        links = ", ".join(f'<a href="{escape(e["page"])}#errors">{escape(e["name"])}</a> ({n})' for e, n in found)
        rows.append(
            f'<tr id="errors-{k}"><td>{escape(title)}</td><td>{sum(n for _, n in found)}</td>'
            f'<td class="links">{links or "–"}</td></tr>'
        )
    out.append(
        '<div class="tablewrap"><table><thead><tr><th>kind</th><th>count</th><th class="links">images</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    missing = [e for e in judged if not e["annotated"]]
    if missing:
        items = "".join(f"<li>{escape(e['name'])}: {escape(e['annotation_note'])}</li>" for e in missing)
        out.append(f"<p>Not annotated (not judged):</p><ul>{items}</ul>")
    return "\n".join(out)


# ---- index ----------------------------------------------------------------------------------


def index_page(entries: Sequence[dict], failures: Sequence[dict], settings: dict, quality: dict | None) -> str:
    """One card per image (thumbnail, detection count, link), the images that failed, settings."""
    n_det = sum(len(e["detections"]) for e in entries)
    methods = ", ".join(method_title(m) for m in settings["methods"])
    body = ["<header><h1>crp-jax report</h1>"]
    body.append(
        f'<p class="lede">{len(entries)} image{"s" if len(entries) != 1 else ""}, {n_det} detections '
        f"(score ≥ {settings['score_threshold']}, at most {settings['max_detections']} per image) · weights: "
        f"<code>{escape(settings['weights'])}</code> · methods: {escape(methods)} · Contrastive Relevance "
        'Propagation (Tsunakawa et al. 2019). All numbers are also in <a href="report.json">report.json</a>.</p>'
    )
    body.append("</header><main>")
    if quality is not None:
        body.append(
            '<h2>Data set</h2><p><a href="quality.html">Explanation quality on '
            f"{quality['n_scenes']} generated held-out scenes</a> ({quality['n_matched']} matched detections, "
            "bootstrap intervals).</p>"
        )
    body.append(_errors_summary(entries))
    body.append("<h2>Images</h2>")
    if entries:
        cards = []
        for e in entries:
            nd = len(e["detections"])
            classes = ", ".join(d["class"] for d in e["detections"])
            alt = f"{e['name']}: its {nd} detection boxes"
            cards.append(
                f'<article class="card"><a href="{escape(e["page"])}">{_img(e["thumb"], alt)}</a>'
                f'<h2><a href="{escape(e["page"])}">{escape(e["name"])}</a></h2>'
                f"<p>{nd} detection{'s' if nd != 1 else ''}{': ' + escape(classes) if nd else ''}</p>"
                f"<p>{e['width']}×{e['height']} px</p></article>"
            )
        body.append(f'<div class="cards">{"".join(cards)}</div>')
    else:
        body.append("<p>No image could be explained.</p>")
    if failures:
        items = "".join(f"<li><code>{escape(f['path'])}</code>: {escape(f['reason'])}</li>" for f in failures)
        body.append(f'<h2>Images that could not be read</h2><ul class="failed">{items}</ul>')
    body.append("</main>")
    return document("crp-jax report", "\n".join(body))


# ---- quality page ---------------------------------------------------------------------------


def quality_page(quality: dict) -> str:
    """The data-set table (metric × method, 95 % bootstrap intervals) and its figures."""
    rows = quality["rows"]
    cols = quality["columns"]
    body = ['<header><nav><a href="index.html">← all images</a></nav><h1>Explanation quality</h1>']
    body.append(
        f'<p class="lede">{quality["n_scenes"]} generated held-out scenes (data-set seed {quality["seed"]}), '
        f"{quality['n_matched']} detections matched to a ground-truth object of the same class (IoU ≥ 0.5). "
        "Each cell: mean over the matched detections [95 % percentile bootstrap interval, "
        f"{quality['n_boot']} resamples] (n).</p></header><main>"
    )
    body.append("<h2>Table</h2>")
    head = "<tr><th>method</th>" + "".join(f"<th>{escape(c['title'])}</th>" for c in cols) + "</tr>"
    trs = []
    for r in rows:
        tds = []
        for c in cols:
            cell = quality["cells"][r][c["key"]]
            tds.append(
                "<td>–</td>"
                if cell is None
                else f"<td>{fmt(cell['mean'])} [{fmt(cell['lo'])}, {fmt(cell['hi'])}] ({cell['n']})</td>"
            )
        trs.append(f"<tr><td>{escape(quality['row_titles'][r])}</td>{''.join(tds)}</tr>")
    body.append(f'<div class="tablewrap"><table><thead>{head}</thead><tbody>{"".join(trs)}</tbody></table></div>')
    body.append("<h2>What the columns mean</h2><ul>")
    body += [f"<li><b>{escape(c['title'])}</b>: {escape(c['doc'])}</li>" for c in cols]
    body.append("</ul>")
    body.append(f'<p class="lede">{escape(quality["note"])}</p>')
    body.append("<h2>Figures</h2>")
    body.append('<div class="maps">')
    for c in cols:
        cells = [quality["cells"][r][c["key"]] for r in rows]
        body.append(
            interval_svg(
                [quality["row_titles"][r] for r in rows],
                [None if x is None else (x["mean"], x["lo"], x["hi"]) for x in cells],
                c["title"],
            )
        )
    body.append("</div></main>")
    return document("Explanation quality · crp-jax report", "\n".join(body))
