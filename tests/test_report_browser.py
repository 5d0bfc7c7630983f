"""The report in a real browser: Debian's ``chromium`` in headless mode, pages loaded from disk.

Checks (from the DOM after the page has loaded, through ``--dump-dom``; the report's inline
self-check script writes its findings into attributes of ``<html>``, see
crp_jax/report/html.py):

- one ``data-detection`` section per detection that ``cj.detect`` returns at the report's
  threshold, numbered 0..N-1 in that order;
- every ``<img>`` decoded (naturalWidth > 0) and has alt text; no JavaScript error and no
  ``console.error``; no URL with a scheme (and the browser runs with every host name
  unresolvable, so a fetch from the network would fail and show up as a broken picture);
- headings in order (one h1, no level skipped); no horizontal overflow at 1280 px nor in a
  400 px window;
- screenshots are not blank (many distinct colours).

Skipped with a message where chromium is not installed (.ci/run installs it with apt-get).
"""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import crp_jax as cj
from crp_jax.cli import main
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run does this): "
    "the report's browser checks are skipped",
)
THRESHOLD = 0.5  # crp-jax detect's default, which the report uses


def _chromium(tmp: Path, url: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # a fresh profile per run
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing can be fetched from a network
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        *args,
        url.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def dump_dom(tmp: Path, page: Path, width: int = 1280, height: int = 900) -> str:
    res = _chromium(tmp, page, f"--window-size={width},{height}", "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "data-check-images" in res.stdout, f"the page's self-check did not run:\n{res.stdout[:500]}"
    return res.stdout


def screenshot(tmp: Path, page: Path, png: Path, width: int = 1280, height: int = 1600) -> np.ndarray:
    res = _chromium(tmp, page, f"--window-size={width},{height}", f"--screenshot={png}")
    assert res.returncode == 0 and png.is_file(), res.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB"))


class _Dom(HTMLParser):
    """The parts of a dumped DOM the checks need."""

    def __init__(self):
        super().__init__()
        self.root: dict = {}
        self.sections: list[str] = []
        self.headings: list[int] = []
        self.imgs: list[dict] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.root = a
        if "data-detection" in a:
            self.sections.append(a["data-detection"])
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))
        if tag == "img":
            self.imgs.append(a)
        for key in ("src", "href", "action", "poster", "data"):
            if a.get(key):
                self.urls.append(a[key])


def parse(dom: str) -> _Dom:
    p = _Dom()
    p.feed(dom)
    return p


def check_page(dom: str, pictures: bool = True) -> _Dom:
    """The checks every page must pass; returns the parsed DOM. ``pictures=False``: a page
    without ``<img>`` (the quality page draws its charts as inline SVG)."""
    p = parse(dom)
    assert json.loads(p.root["data-check-errors"]) == [], "JavaScript errors or console.error"
    assert json.loads(p.root["data-check-broken-images"]) == []
    assert int(p.root["data-check-images"]) == len(p.imgs)
    assert (len(p.imgs) > 0) == pictures
    assert all(img.get("alt", "").strip() for img in p.imgs), "an image without alt text"
    assert p.root["data-check-overflow"] == "false", "the page is wider than the window"
    for url in p.urls:
        assert not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//", url), f"URL leaves the report folder: {url}"
    assert p.headings[0] == 1 and p.headings.count(1) == 1
    assert all(b <= a + 1 for a, b in zip(p.headings, p.headings[1:])), f"heading levels skip: {p.headings}"
    return p


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A report of three images (a held-out scene, the same scene enlarged into a wide JPEG, a
    grey PNG) plus two generated scenes (data-set mode)."""
    d = tmp_path_factory.mktemp("inputs")
    scene = generate_scene(HELDOUT_SEED, 3).image
    images = [d / "scene3.png", d / "wide.jpg", d / "grey.png"]
    Image.fromarray(scene).save(images[0])
    wide = Image.new("RGB", (420, 260), (200, 190, 170))
    wide.paste(Image.fromarray(scene).resize((256, 256), Image.Resampling.BILINEAR), (90, 2))
    wide.save(images[1], quality=92)
    Image.fromarray(scene).convert("L").save(images[2])
    out = tmp_path_factory.mktemp("site") / "report"
    rc = main(["report", *map(str, images), "--scenes", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out, images, json.loads((out / "report.json").read_text())


def test_index_loads_cleanly_and_links_every_image_page(site, tmp_path):
    out, images, doc = site
    p = check_page(dump_dom(tmp_path, out / "index.html"))
    pages = {e["page"] for e in doc["images"]}
    assert len(pages) == len(images) + 2
    assert pages <= set(p.urls) and "quality.html" in p.urls
    shot = screenshot(tmp_path, out / "index.html", tmp_path / "index.png", height=1000)
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 500


def test_image_pages_have_one_section_per_detection_of_detect(site, tmp_path):
    out, images, doc = site
    model, variables, meta = cj.load_pretrained()
    by_source = {e["source"]: e for e in doc["images"]}
    n_total = 0
    for path in images:
        pixels = cj.viz.load_image(path)
        x, sizes = cj.preprocess_with_sizes([pixels], meta)
        det = cj.detect(model, variables, x, meta=meta, score_threshold=THRESHOLD, image_sizes=sizes)[0]
        page = out / by_source[str(path)]["page"]
        p = check_page(dump_dom(tmp_path, page))
        assert p.sections == [str(i) for i in range(len(det))]
        n_total += len(det)
    assert n_total >= 3  # the check has detections to count


def test_pages_fit_a_narrow_window(site, tmp_path):
    out, _, doc = site
    for page in (out / "index.html", out / doc["images"][0]["page"]):
        check_page(dump_dom(tmp_path, page, width=400, height=900))
    check_page(dump_dom(tmp_path, out / "quality.html", width=400, height=900), pictures=False)


def test_quality_page_loads_cleanly(site, tmp_path):
    out, _, doc = site
    dom = dump_dom(tmp_path, out / "quality.html")
    check_page(dom, pictures=False)
    assert doc["quality"]["n_scenes"] == 2
    assert dom.count("<svg") == 4  # one figure per column of the table


def test_image_page_screenshot_is_not_blank(site, tmp_path):
    out, _, doc = site
    entry = max(doc["images"], key=lambda e: len(e["detections"]))
    shot = screenshot(tmp_path, out / entry["page"], tmp_path / "page.png")
    colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    assert colours > 2000, f"only {colours} distinct colours: the page looks blank"
    # the top of the page (title, overview picture) is not one flat colour either
    assert shot[:400].std() > 20


# ---- a real detector on a real photo: BlazeFace on the astronaut --------------------------

# MediaPipe's keypoint regressors, written out by hand (x then y per keypoint)
KEYPOINT_REGRESSORS = [f"{k}_{c}" for k in "right_eye left_eye nose_tip mouth right_ear left_ear".split() for c in "xy"]


class _KeypointFigures(HTMLParser):
    """``data-regressor`` of every keypoint figure, with the alt text of its picture."""

    def __init__(self):
        super().__init__()
        self.figures: list[list] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure" and "data-regressor" in a:
            self.figures.append([a["data-regressor"], None])
        elif tag == "img" and self.figures and self.figures[-1][1] is None:
            self.figures[-1][1] = a.get("alt", "")

    def handle_endtag(self, tag):
        if tag == "figure" and self.figures and self.figures[-1][1] is None:
            self.figures[-1][1] = ""


@pytest.fixture(scope="module")
def face_site(tmp_path_factory):
    """``crp-jax report astronaut.png --weights blazeface --methods crp`` (short range, CRP only)."""
    pytest.importorskip("tflite", reason="the [tflite] extra (tflite, flatbuffers) is not installed")
    data = pytest.importorskip("skimage.data", reason="scikit-image (real photos) is not installed")
    path = tmp_path_factory.mktemp("face") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    out = tmp_path_factory.mktemp("face_site") / "report"
    rc = main(["report", str(path), "--weights", "blazeface", "--methods", "crp", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out, path, json.loads((out / "report.json").read_text())


def test_blazeface_report_shows_the_astronauts_face_with_its_class_and_keypoint_maps(face_site, tmp_path):
    out, path, doc = face_site
    model, variables, meta = cj.load_pretrained("blazeface")
    x, sizes = cj.preprocess_with_sizes([cj.viz.load_image(path)], meta)
    det = cj.detect(model, variables, x, meta=meta, score_threshold=THRESHOLD, image_sizes=sizes)[0]
    assert len(det) == 1  # the one face
    page = out / doc["images"][0]["page"]
    dom = dump_dom(tmp_path, page)
    p = check_page(dom)  # every picture decoded, alt text, no script error, no overflow
    assert p.sections == ["0"]
    assert 'alt="CRP: why face' in dom  # the class map
    figs = _KeypointFigures()
    figs.feed(dom)
    assert [r for r, _ in figs.figures] == KEYPOINT_REGRESSORS
    for r, alt in figs.figures:  # each keypoint figure holds its picture, described in words
        point, axis = r.rsplit("_", 1)
        assert alt == f"what moves the {point.replace('_', ' ')} {'right' if axis == 'x' else 'down'}"
    d = doc["images"][0]["detections"][0]
    # the report's keypoints are detect's, in original pixels
    np.testing.assert_allclose(list(d["keypoints"].values()), det.keypoints[0], atol=1e-3)
    # a single sigmoid logit: CRP's "others" is the logit itself, one-hot, so it conserves 1
    assert d["conservation"]["crp"]["initial"] == 1.0 and abs(d["conservation"]["crp"]["error"]) < 1e-3
