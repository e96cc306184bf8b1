"""zf.views.gallery: the static unit gallery, built from a fabricated run directory (zf.views.results layout, no model,
no mining) and driven in headless Chromium.

Browser tests (marker ``browser``) need Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``); they skip without them.  Screenshots land in ``outputs/test-artifacts/``.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zf.mining.table import TopK
from zf.views.gallery import build_gallery, data_script, layer_page, unit_page
from zf.views.results import layer_dir, patch_path, projection_path, source_path, unit_figure_path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "outputs" / "test-artifacts"
METHODS = ["deconvnet", "guided", "gradient"]
# name -> channels mined, receptive field, stride, offset, map size, channels of the layer
LAYERS = {
    "conv1": dict(units=[0, 3, 5, 10, 17, 40, 41, 95], rf=7, stride=2, offset=-1, size=31, channels=96),
    "conv2": dict(units=[2, 7, 11, 200], rf=19, stride=4, offset=-5, size=15, channels=256),
}
SOURCE_W, SOURCE_H = 80, 64  # not square, so a swapped x / y would show
MISSING = ("conv1", "guided", 3, 0)  # (layer, method, unit, rank) whose projection PNG the fixture leaves out
SHORT = ("conv2", 11, 7)  # (layer, unit, from rank): fewer than k images, image = -1 (tiny data sets)
# units that never fire (all activations 0): conv1's is listed in summary.json's dead_units, conv2's only shows in
# its table (older runs have no dead_units)
DEAD = {"conv1": [41], "conv2": [200]}
DEAD_IN_SUMMARY = ("conv1",)
SKIPPED = ["/data/broken.JPEG", "/data/odd & <name>.png"]


def _png_bytes(size: int, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def fabricate_run(run: Path, layers: dict = LAYERS, methods=METHODS, k: int = 9, n_images: int = 12,
                  seed: int = 0, short=SHORT, missing=MISSING, dead: dict | None = None,
                  skipped: list | None = None) -> Path:
    """A run directory laid out exactly as zf.views.results documents it, with random images and a consistent TopK."""
    rng = np.random.default_rng(seed)
    dead = DEAD if dead is None else dead
    (run / "sources").mkdir(parents=True)
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 256, (SOURCE_H, SOURCE_W, 3), dtype=np.uint8)).save(source_path(run, i))
    (run / "images.json").write_text(json.dumps([f"/data/imagenet/val/n0144{i % 3}/ILSVRC_val_{i:08d}.JPEG"
                                                 for i in range(n_images)]))
    for name, spec in layers.items():
        units = np.array(spec["units"])
        U = len(units)
        scale = rng.uniform(0.5, 50, (U, 1))
        activation = np.sort(rng.uniform(0.1, 1, (U, k)), axis=1)[:, ::-1] * scale
        image = rng.integers(0, n_images, (U, k))
        y, x = rng.integers(0, spec["size"], (U, k)), rng.integers(0, spec["size"], (U, k))
        # rank 0 runs past the top and right edges of the source: clipped for display
        y[:, 0], x[:, 0] = 0, (SOURCE_W - spec["offset"] - spec["rf"] // 2) // spec["stride"]
        y0, x0 = y * spec["stride"] + spec["offset"], x * spec["stride"] + spec["offset"]
        box = np.stack([y0, y0 + spec["rf"], x0, x0 + spec["rf"]], axis=-1)
        if short and short[0] == name:
            i = list(units).index(short[1])
            image[i, short[2]:] = -1
            activation[i, short[2]:] = -np.inf
        for u in dead.get(name, []):
            activation[list(units).index(u)] = 0.0
        ldir = layer_dir(run, name)
        for d in ["patches", "units", *methods]:
            (ldir / d).mkdir(parents=True)
        TopK(units, activation.astype(np.float32), image, y, x, box).save(ldir / "topk.npz")
        blobs = [_png_bytes(spec["rf"], rng) for _ in range(8)]  # few encodes, many files: fast for 512 units
        for i, u in enumerate(units.tolist()):
            for r in range(k):
                if image[i, r] < 0:
                    continue
                patch_path(run, name, u, r).write_bytes(blobs[(i + r) % 8])
                for m in methods:
                    if (name, m, u, r) != missing:
                        projection_path(run, name, m, u, r).write_bytes(blobs[(i + r + 1) % 8])
            if len(units) <= 16:
                unit_figure_path(run, name, u, methods[0]).write_bytes(blobs[0])
    summary = {
        "model": "zfnet", "checkpoint": "checkpoints/zfnet.pt", "data": "imagenet-val-tiny",
        "transform": {"resize": 256, "crop": 224}, "methods": list(methods), "k": k,
        "layers": {n: {"rf": s["rf"], "stride": s["stride"], "units": len(s["units"]), "channels": s["channels"]}
                   for n, s in layers.items()},
        "date": "2024-05-01T12:00:00", "n_images": n_images, "skipped": SKIPPED if skipped is None else skipped,
    }
    for n in DEAD_IN_SUMMARY:
        if n in summary["layers"]:
            summary["layers"][n]["dead_units"] = dead.get(n, [])
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    return run


def read_data(gallery: Path, layer: str) -> dict:
    text = (gallery / data_script(layer)).read_text()
    prefix = "window.ZF_LAYER = "
    assert text.startswith(prefix)
    return json.loads(text[len(prefix):].rstrip().rstrip(";"))


@pytest.fixture
def run(tmp_path):
    return fabricate_run(tmp_path / "run")


# ---- plain tests ---------------------------------------------------------------------------------------------------

def test_build_writes_every_page(run):
    index = build_gallery(run)
    g = run / "gallery"
    assert index == g / "index.html"
    for f in ["index.html", "gallery.js", "gallery.css"]:
        assert (g / f).is_file()
    for layer in LAYERS:
        for f in [layer_page(layer), unit_page(layer), data_script(layer)]:
            assert (g / f).is_file()
    html = index.read_text()
    for text in ["zfnet", "imagenet-val-tiny", "deconvnet, guided, gradient", "2024-05-01T12:00:00", "conv1", "conv2"]:
        assert text in html


def test_relative_links_point_to_files_that_exist(run):
    build_gallery(run)
    g = run / "gallery"
    for page in g.glob("*.html"):
        for ref in re.findall(r'(?:href|src)="([^"]*)"', page.read_text()):
            if ref.startswith(("#", "data:")):
                continue
            assert (g / ref.split("#")[0]).is_file(), f"{page.name} links to missing {ref}"
    for layer in LAYERS:  # the images the JS builds from the data: each flagged one exists, each missing one is flagged
        data = read_data(g, layer)
        for unit in data["units"]:
            u = unit["u"]
            for r in range(data["k"]):
                assert (unit["p"][r] == "1") == patch_path(run, layer, u, r).is_file()
                for m in METHODS:
                    assert (unit["m"][m][r] == "1") == projection_path(run, layer, m, u, r).is_file()
                if unit["i"][r] >= 0:
                    assert data["images"][str(unit["i"][r])][1]
                    assert (g / "../sources" / f"{unit['i'][r]:06d}.jpg").is_file()
                    assert (g / data["dir"] / "patches" / f"u{u:04d}_r{r}.png").is_file()
    assert read_data(g, "conv1")["units"][1]["m"]["guided"][0] == "0"  # MISSING: unit 3 is the second unit


def test_images_are_referenced_not_inlined(run):
    build_gallery(run)
    for f in (run / "gallery").iterdir():
        assert "base64" not in f.read_text(), f.name
    assert not list((run / "gallery").glob("*.png"))


def test_data_matches_topk(run):
    build_gallery(run)
    for layer in LAYERS:
        t = TopK.load(layer_dir(run, layer) / "topk.npz")
        data = read_data(run / "gallery", layer)
        assert [d["u"] for d in data["units"]] == t.units.tolist()
        assert np.array_equal([d["b"] for d in data["units"]], t.box)
        assert np.array_equal([d["i"] for d in data["units"]], t.image)
        acts = np.array([[np.nan if a is None else a for a in d["a"]] for d in data["units"]])
        np.testing.assert_allclose(acts, np.where(t.image >= 0, t.activation, np.nan), rtol=1e-6)
    short = read_data(run / "gallery", "conv2")["units"][2]
    assert short["a"][7:] == [None, None] and short["p"].endswith("00")  # -inf padding -> null, no PNG


def test_dead_units_are_flagged_in_the_data_and_counted_on_the_index(run):
    index = build_gallery(run).read_text()
    c1, c2 = read_data(run / "gallery", "conv1"), read_data(run / "gallery", "conv2")
    assert [u["u"] for u in c1["units"] if u["d"]] == [41] and c1["n_dead"] == 1 and c1["dead_from"] == "summary.json"
    assert [u["u"] for u in c2["units"] if u["d"]] == [200] and c2["dead_from"] == "topk.npz"  # from the table
    assert re.findall(r'<td class="dead-count">(\d+)</td>', index) == ["1", "1"]
    # summary.json wins over the table: a unit listed there is dead even with activations > 0
    summary = json.loads((run / "summary.json").read_text())
    summary["layers"]["conv1"]["dead_units"] = [0, 41]
    (run / "summary.json").write_text(json.dumps(summary))
    build_gallery(run)
    assert [u["u"] for u in read_data(run / "gallery", "conv1")["units"] if u["d"]] == [0, 41]


def test_skipped_images_are_listed_on_the_index(run, tmp_path):
    html = build_gallery(run).read_text()
    listed = re.search(r'<ul class="skipped" id="skipped">(.*?)</ul>', html, re.S).group(1)
    assert re.findall(r"<li>(.*?)</li>", listed) == ["/data/broken.JPEG", "/data/odd &amp; &lt;name&gt;.png"]
    assert "Skipped images (2)" in html
    clean = fabricate_run(tmp_path / "clean", skipped=[])
    html = build_gallery(clean).read_text()
    assert 'id="skipped"' not in html and "No images were skipped" in html


def test_layers_argument_and_unmined_layers(run):
    build_gallery(run, layers=["conv2"])
    assert not (run / "gallery" / layer_page("conv1")).exists()
    with pytest.raises(FileNotFoundError, match="conv9"):
        build_gallery(run, layers=["conv9"])
    summary = json.loads((run / "summary.json").read_text())
    summary["layers"]["conv5"] = {"rf": 163, "stride": 16, "units": 0, "channels": 256}
    (run / "summary.json").write_text(json.dumps(summary))
    del summary["layers"]["conv2"]  # mined but left out of summary.json: still shown, after the listed layers
    (run / "summary.json").write_text(json.dumps(summary))
    html = build_gallery(run).read_text()
    assert "not mined" in html and not (run / "gallery" / layer_page("conv5")).exists()
    assert html.index(layer_page("conv1")) < html.index(layer_page("conv2"))


def test_rectangular_fields_are_shown_per_axis(run):
    summary = json.loads((run / "summary.json").read_text())
    summary["layers"]["conv2"].update(rf_hw=[16, 20], stride_hw=[2, 4])
    summary["layers"]["conv1"].update(rf_hw=[7, 7], stride_hw=[2, 2])
    (run / "summary.json").write_text(json.dumps(summary))
    html = build_gallery(run).read_text()
    assert "<td>16x20</td><td>2x4</td>" in html and f"<td>{summary['layers']['conv1']['rf']}</td>" in html
    assert read_data(run / "gallery", "conv2")["rf_label"] == "16x20"


def test_module_path_layer_names(tmp_path):
    run = fabricate_run(tmp_path / "run", layers={"features.9": LAYERS["conv2"]}, short=None, missing=None)
    build_gallery(run)
    data = read_data(run / "gallery", "features.9")
    assert (run / "gallery" / layer_page("features.9")).is_file()
    assert (run / "gallery" / data["dir"] / "patches" / "u0002_r0.png").is_file()


def test_rebuild_from_arrays_with_the_script(run):
    shutil.rmtree(run / "gallery", ignore_errors=True)
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "gallery.py"), str(run)], capture_output=True,
                         text=True, check=True)
    assert Path(out.stdout.strip()) == run / "gallery" / "index.html"
    assert (run / "gallery" / data_script("conv1")).is_file()


# ---- browser tests -------------------------------------------------------------------------------------------------

# Debian's paths; elsewhere point ZF_CHROMIUM / ZF_CHROMEDRIVER at the binaries.  Never selenium-manager (network).
CHROMIUM = Path(os.environ.get("ZF_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("ZF_CHROMEDRIVER", "/usr/bin/chromedriver"))


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
              "--window-size=1280,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = fabricate_run(tmp_path_factory.mktemp("browser") / "run")
    build_gallery(run)
    return run


def open_page(driver, path: Path, fragment: str = ""):
    driver.get("about:blank")  # a fresh document even where only the hash differs
    driver.get_log("browser")  # clear
    driver.get(path.as_uri() + fragment)
    wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")


def wait(driver, cond, timeout=10):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(cond)


def severe(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def load_every_image(driver) -> list:
    """Force lazy images to load, wait for all, return the src of every broken one."""
    driver.execute_script("document.querySelectorAll('img').forEach(function (i) { i.loading = 'eager'; });")
    wait(driver, lambda d: d.execute_script(
        "return Array.from(document.images).every(function (i) { return i.complete; })"))
    return driver.execute_script(
        "return Array.from(document.images).filter(function (i) { return !(i.naturalWidth > 0); })"
        ".map(function (i) { return i.src; })")


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"gallery_{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def unit_number(driver) -> int:
    return int(driver.find_element("id", "unit-number").text)


@pytest.mark.browser
def test_index_loads_without_console_errors(driver, built):
    open_page(driver, built / "gallery" / "index.html")
    assert severe(driver) == []
    links = driver.find_elements("css selector", "a.layer-link")
    assert [a.text for a in links] == list(LAYERS)
    assert [li.text for li in driver.find_elements("css selector", "#skipped li")] == SKIPPED
    screenshot(driver, "index")
    links[0].click()
    wait(driver, lambda d: d.find_elements("css selector", ".cell"))
    assert len(driver.find_elements("css selector", ".cell")) == len(LAYERS["conv1"]["units"])


@pytest.mark.browser
@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_page_every_image_loads(driver, built, layer):
    open_page(driver, built / "gallery" / layer_page(layer))
    assert load_every_image(driver) == []
    assert len(driver.find_elements("css selector", ".cell img.thumb")) >= len(LAYERS[layer]["units"])
    assert severe(driver) == []
    screenshot(driver, f"layer_{layer}")


@pytest.mark.browser
def test_sort_by_activation_and_filter(driver, built):
    from selenium.webdriver.support.ui import Select

    open_page(driver, built / "gallery" / layer_page("conv1"))
    t = TopK.load(layer_dir(built, "conv1") / "topk.npz")

    def dom_units():
        return [int(c.get_attribute("data-unit")) for c in driver.find_elements("css selector", ".cell")
                if c.is_displayed()]

    assert dom_units() == sorted(t.units.tolist())
    Select(driver.find_element("id", "sort")).select_by_value("act")
    acts = [float(c.get_attribute("data-act")) for c in driver.find_elements("css selector", ".cell")]
    assert acts == sorted(acts, reverse=True)
    assert dom_units() == t.units[np.argsort(-t.activation.max(1), kind="stable")].tolist()

    box = driver.find_element("id", "filter")
    box.send_keys("3-17")
    assert sorted(dom_units()) == [3, 5, 10, 17]
    box.clear()
    box.send_keys("40, 0")
    assert sorted(dom_units()) == [0, 40]
    assert len(driver.find_elements("css selector", ".cell")) == len(t.units)  # hidden, not removed
    box.clear()
    box.send_keys("x")
    assert dom_units() == []


@pytest.mark.browser
def test_dead_units_are_badged_sorted_and_filtered(driver, built):
    from selenium.webdriver.support.ui import Select

    open_page(driver, built / "gallery" / layer_page("conv1"))
    cells = {int(c.get_attribute("data-unit")): c for c in driver.find_elements("css selector", ".cell")}
    assert [u for u, c in cells.items() if "dead" in c.get_attribute("class").split()] == DEAD["conv1"]
    badges = driver.find_elements("css selector", ".cell .badge.dead")
    assert len(badges) == 1 and badges[0].text == "dead"
    assert badges[0].find_element("xpath", "ancestor::a").get_attribute("data-unit") == "41"
    assert "not-meaningful" in cells[41].find_element("css selector", ".thumbs").get_attribute("class")
    assert "not-meaningful" not in cells[40].find_element("css selector", ".thumbs").get_attribute("class")
    assert float(cells[41].find_element("css selector", "img.thumb").value_of_css_property("opacity")) < 0.5

    def shown():
        return [int(c.get_attribute("data-unit")) for c in driver.find_elements("css selector", ".cell")
                if c.is_displayed()]

    show = Select(driver.find_element("id", "show"))
    show.select_by_value("dead")
    assert shown() == [41]
    assert "show=dead" in driver.current_url
    show.select_by_value("live")
    assert shown() == [u for u in LAYERS["conv1"]["units"] if u != 41]
    show.select_by_value("all")
    Select(driver.find_element("id", "sort")).select_by_value("dead")
    assert shown() == [41] + [u for u in LAYERS["conv1"]["units"] if u != 41]
    screenshot(driver, "layer_dead")
    assert severe(driver) == []

    open_page(driver, built / "gallery" / unit_page("conv1"), "#u=41&m=deconvnet")
    note = driver.find_element("id", "dead-note")
    assert note.is_displayed() and "never fires on this data" in note.text
    assert "dead" in driver.find_element("id", "unit-pos").text
    screenshot(driver, "unit_dead")
    driver.find_element("tag name", "body").send_keys("k")  # to unit 40: live
    wait(driver, lambda d: unit_number(d) == 40)
    assert not driver.find_element("id", "dead-note").is_displayed()
    assert "not-meaningful" not in driver.find_element("css selector", "main.unit").get_attribute("class")


@pytest.mark.browser
def test_unit_page_images_keyboard_and_method_toggle(driver, built):
    from selenium.webdriver.common.keys import Keys

    units = LAYERS["conv1"]["units"]
    open_page(driver, built / "gallery" / unit_page("conv1"), "#u=3&m=deconvnet")
    assert unit_number(driver) == 3
    assert load_every_image(driver) == []
    assert severe(driver) == []
    screenshot(driver, "unit")
    assert len(driver.find_elements("css selector", "#patches img")) == 9
    proj = [i.get_attribute("src") for i in driver.find_elements("css selector", "#projections img")]
    assert len(proj) == 9 and all("/conv1/deconvnet/u0003_r" in s for s in proj)

    driver.find_element("css selector", 'button[data-method="guided"]').click()
    wait(driver, lambda d: "m=guided" in d.current_url)
    proj = [i.get_attribute("src") for i in driver.find_elements("css selector", "#projections img")]
    assert len(proj) == 8 and all("/conv1/guided/u0003_r" in s for s in proj)  # rank 0 is MISSING
    assert driver.find_elements("css selector", '#projections figure[data-rank="0"] .placeholder')
    assert load_every_image(driver) == []

    body = driver.find_element("tag name", "body")
    body.send_keys(Keys.ARROW_RIGHT)
    wait(driver, lambda d: unit_number(d) == units[2])
    assert "m=guided" in driver.current_url  # the method stays across units
    body.send_keys("j")
    wait(driver, lambda d: unit_number(d) == units[3])
    body.send_keys(Keys.ARROW_LEFT)
    body.send_keys("k")
    wait(driver, lambda d: unit_number(d) == units[1])
    open_page(driver, built / "gallery" / unit_page("conv1"), f"#u={units[0]}")
    driver.find_element("tag name", "body").send_keys(Keys.ARROW_LEFT)  # the first unit has no previous
    time.sleep(0.2)
    assert unit_number(driver) == units[0]


@pytest.mark.browser
@pytest.mark.parametrize("rank", [0, 4])
def test_click_patch_shows_source_with_receptive_field_box(driver, built, rank):
    layer, unit = "conv2", 7
    t = TopK.load(layer_dir(built, layer) / "topk.npz")
    i = t.units.tolist().index(unit)
    open_page(driver, built / "gallery" / unit_page(layer), f"#u={unit}&m=gradient")
    driver.find_element("css selector", f'#patches figure[data-rank="{rank}"]').click()
    box = driver.find_element("id", "rf-box")
    wait(driver, lambda d: box.value_of_css_property("visibility") == "visible")
    img = driver.find_element("id", "source-img")
    assert img.get_attribute("src").endswith(f"/sources/{t.image[i, rank]:06d}.jpg")
    assert driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == \
        [SOURCE_W, SOURCE_H]
    ir, br = img.rect, box.rect
    y0, y1, x0, x1 = t.box[i, rank]
    y0, y1 = np.clip([y0, y1], 0, SOURCE_H)
    x0, x1 = np.clip([x0, x1], 0, SOURCE_W)
    sx, sy = ir["width"] / SOURCE_W, ir["height"] / SOURCE_H
    if rank == 0:  # the fixture put rank 0 on the top-right corner, past the image
        assert t.box[i, 0, 0] < 0 and t.box[i, 0, 3] > SOURCE_W
    expected = dict(x=ir["x"] + x0 * sx, y=ir["y"] + y0 * sy, width=(x1 - x0) * sx, height=(y1 - y0) * sy)
    for key, v in expected.items():
        assert br[key] == pytest.approx(v, abs=1.5), (key, br, expected)
    assert t.units[i] == unit and f"rank {rank + 1}" in driver.find_element("id", "viewer-caption").text
    screenshot(driver, f"source_r{rank}")
    driver.find_element("tag name", "body").send_keys("\ue00c")  # Escape
    wait(driver, lambda d: not d.find_element("id", "viewer").is_displayed())
    assert severe(driver) == []


@pytest.mark.browser
def test_512_units_build_and_load(driver, tmp_path):
    """512 units lay out and the first screen of thumbnails loads (timings: benchmarks/bench_gallery.py)."""
    layers = {"conv5": dict(units=list(range(512)), rf=11, stride=16, offset=-3, size=13, channels=512)}
    run = fabricate_run(tmp_path / "run", layers=layers, methods=["deconvnet"], n_images=64, short=None,
                        missing=None)
    build_gallery(run)
    driver.get("about:blank")
    driver.get((run / "gallery" / layer_page("conv5")).as_uri())  # returns after the load event
    driver.set_script_timeout(60)
    # polled inside the page, every frame: readyState complete and every thumbnail of the first screen decoded
    driver.execute_async_script("""
        var done = arguments[arguments.length - 1];
        (function poll() {
          var h = window.innerHeight, imgs = Array.from(document.querySelectorAll('.cell img')).filter(
              function (i) { var r = i.getBoundingClientRect(); return r.top < h && r.bottom > 0; });
          if (document.readyState === 'complete' && imgs.length > 0 &&
              imgs.every(function (i) { return i.complete && i.naturalWidth > 0; })) done(performance.now());
          else requestAnimationFrame(poll);
        })();""")
    n_cells = len(driver.find_elements("css selector", ".cell"))
    screenshot(driver, "layer_512")
    assert n_cells == 512
    assert severe(driver) == []
