"""zf.explore: the live explorer, on a tiny real run of the main job (shipped model, 20 val images, relu2 and relu5,
units 0-3), served on a free port and driven with real HTTP requests and in headless Chromium.

What is checked against zf itself: the grid's per-channel peaks are ``zf.projection.api.activations`` of the image, and the
projection the page shows is ``zf.views.visualize.display`` of ``zf.projection.api.project`` of the image's strongest activation
of the unit, computed here (decoded from the page's PNG, equal within rounding).  Browser tests (marker
``browser``) need ``apt-get install chromium chromium-driver`` and skip without it (fixtures of test_gallery.py).
``ZF_DOCS_SCREENSHOT=1`` also writes the README's screenshot, docs/figures/explorer.png.
"""
from __future__ import annotations

import base64
import functools
import http.client
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("flask", reason="the explorer needs Flask: pip install 'zf[explore]'")

from test_gallery import ARTIFACTS, driver, severe, wait  # noqa: E402,F401  (the Chromium fixture)

from zf.data import Normalize, read_image, resize_crop  # noqa: E402
from zf.projection.api import activations, project  # noqa: E402
from zf.explore import is_loopback, main  # noqa: E402
from zf.explore.app import serve_in_thread  # noqa: E402
from zf.net.models import load_zfnet  # noqa: E402
from zf.net.receptive import receptive_fields, unit_box  # noqa: E402
from zf.views.visualize import crop_boxes, display, view_boxes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UNITS = [0, 1, 2, 3]
LAYERS = ["relu2", "relu5"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, imagenette):
    """A real main-job run, as a user makes one (about 15 s on 2 busy cores)."""
    tmp = tmp_path_factory.mktemp("explore")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg", "WANDB_SILENT": "true"}
    subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), f"layer=[{','.join(LAYERS)}]",
                    f"units=[{','.join(map(str, UNITS))}]", "data.limit=20", "mine_layers=[]", "logger=none",
                    "progress=false", "unit_figures=false", f"paths.data_dir={imagenette}",
                    f"paths.cache_dir={tmp / 'cache'}", f"hydra.run.dir={tmp / 'run'}"],
                   check=True, env=env, cwd=tmp, capture_output=True)
    return tmp / "run"


@pytest.fixture(scope="module")
def server(run_dir):
    srv, explorer = serve_in_thread(run_dir, max_mb=4, max_megapixels=20)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def images(imagenette_val) -> list[Path]:
    """Val images of different classes (so their activations differ)."""
    return [sorted(d.iterdir())[3] for d in sorted(imagenette_val.iterdir())[:6]]


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON or raw bytes, content type): the path is sent exactly as given (no normalising)."""
    c = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data, ctype = r.read(), r.getheader("Content-Type", "")
        return r.status, (json.loads(data) if ctype.startswith("application/json") else data), ctype
    finally:
        c.close()


def upload(server, data: bytes) -> str:
    status, body, _ = request(server, "POST", "/api/image", data, {"Content-Type": "application/octet-stream"})
    assert status == 200, body
    return body["id"]


def get(server, path: str, **params):
    from urllib.parse import urlencode

    return request(server, "GET", path + ("?" + urlencode(params) if params else ""))


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture(scope="module")
def reference(run_dir):
    """zf's own computation, independent of the server: the shipped model, the run's transform."""
    model = load_zfnet().eval()
    summary = json.loads((run_dir / "summary.json").read_text())
    t = summary["transform"]
    norm = Normalize(t["mean"], t["std"])
    rfs = receptive_fields(model, 224)

    def prepare(path: Path) -> torch.Tensor:
        return norm(resize_crop(read_image(path, t["resize_shorter_side"]), t["center_crop"],
                                t["resize_shorter_side"])[None])

    def projection(path: Path, layer: str, unit: int, method: str = "deconvnet") -> tuple[np.ndarray, float]:
        x = prepare(path)
        a = activations(model, x, layer, summary["tap"])[0, unit]
        y, xx = divmod(int(a.reshape(-1).argmax()), a.shape[1])
        p = project(model, x, torch.tensor([[0, unit, y, xx]]), layer, method=method, seed_mode=summary["seed_mode"],
                    tap=summary["tap"], norm=summary["norm"])[0]
        b = unit_box(rfs[layer], y, xx, 224)
        view = view_boxes(torch.tensor([[b.y0, b.y1, b.x0, b.x1]]), 224, 224)
        return display(crop_boxes(p[None], view, fill=0.0)[0]), float(a[y, xx])

    @functools.lru_cache(maxsize=None)
    def peaks(path: Path, layer: str) -> np.ndarray:
        return activations(model, prepare(path), layer, summary["tap"])[0].amax((1, 2)).numpy()

    return {"projection": projection, "peaks": peaks}


# ---- the HTTP API -------------------------------------------------------------------------------------------------


def test_grid_and_unit_agree_with_zf(server, images, reference, run_dir):
    img = images[0]
    iid = upload(server, img.read_bytes())
    status, g, _ = get(server, "/api/grid", image=iid, layer="relu2")
    assert status == 200
    np.testing.assert_allclose(g["peak"], reference["peaks"](img, "relu2"), rtol=1e-4, atol=1e-5)
    assert g["strongest"] == int(np.argmax(g["peak"])) and g["channels"] == len(g["peak"])
    sprite = decode(g["sprite"])
    assert sprite.shape[:2] == (-(-g["channels"] // g["cols"]) * g["h"], g["cols"] * g["w"])
    dead = json.loads((run_dir / "summary.json").read_text())["layers"]["relu5"]["dead_units"]
    unit = max(set(UNITS) - set(dead), key=lambda u: reference["peaks"](img, "relu5")[u])
    for method in ("deconvnet", "guided"):
        want, value = reference["projection"](img, "relu5", unit, method)
        assert value > 0
        status, u, _ = get(server, "/api/unit", image=iid, layer="relu5", unit=unit, method=method)
        assert status == 200 and u["method"] == method and u["value"] == pytest.approx(value, rel=1e-5)
        assert np.abs(decode(u["projection"]).astype(int) - want.astype(int)).max() <= 1
    # the unit's top 9 are the run's files, served from the run folder
    assert len(u["top"]) == 9 and u["top_method"] == "deconvnet" and "computed deconvnet only" in u["top_note"]
    for t in u["top"]:
        status, data, ctype = request(server, "GET", f"/files/{run_dir.name}/{t['patch']}")
        assert status == 200 and ctype == "image/png" and data == (run_dir / t["patch"]).read_bytes()
    status, page, _ = request(server, "GET", f"/files/{run_dir.name}/{u['gallery'].split('#')[0]}")
    assert status == 200 and b"<html" in page.lower()


def test_a_units_top_image_gives_back_the_runs_own_top_projection(server, run_dir):
    """The original file of a unit's rank-0 image: its strongest activation is the mined one, at the mined place,
    and the projection the explorer shows is the run's own rank-0 tile (stored as float16, so within 2 levels)."""
    from zf.mining.table import TopK

    table = TopK.load(run_dir / "layers" / "relu5" / "topk.npz")
    paths = json.loads((run_dir / "images.json").read_text())
    i = int(np.argmax(table.activation[:, 0]))
    unit = int(table.units[i])
    iid = upload(server, Path(paths[table.image[i, 0]]).read_bytes())
    status, u, _ = get(server, "/api/unit", image=iid, layer="relu5", unit=unit)
    assert status == 200 and (u["y"], u["x"]) == (table.y[i, 0], table.x[i, 0])
    assert u["value"] == pytest.approx(float(table.activation[i, 0]), rel=1e-5)
    assert u["box"] == table.box[i, 0].tolist()
    tile = np.asarray(Image.open(run_dir / u["top"][0]["projection"]).convert("RGB"))
    assert np.abs(decode(u["projection"]).astype(int) - tile.astype(int)).max() <= 2


def test_unit_outside_the_rendered_units_has_no_top_but_a_projection(server, images):
    iid = upload(server, images[1].read_bytes())
    status, u, _ = get(server, "/api/unit", image=iid, layer="relu2", unit=40)
    assert status == 200 and u["top"] == [] and u["gallery"] is None and "did not render unit 40" in u["top_note"]
    assert (u["projection"] is not None) == u["fires"]


def test_bad_inputs_get_a_clear_4xx_and_the_server_keeps_serving(server, images, tmp_path):
    iid = upload(server, images[0].read_bytes())
    big = io.BytesIO()
    Image.new("1", (6000, 4000)).save(big, format="PNG")  # 24 megapixels in a few kB: over max_megapixels=20
    cases = [
        (("POST", "/api/image", b"this is not an image"), 415, "not an image"),
        (("POST", "/api/image", b""), 400, "no image"),
        (("POST", "/api/image", images[0].read_bytes()[:300]), 415, "not an image"),  # truncated JPEG
        (("POST", "/api/image", b"\0" * (4 * 2 ** 20 + 1)), 413, "larger than 4 MB"),
        (("POST", "/api/image", big.getvalue()), 413, "24.0 megapixels"),
        (("GET", f"/api/grid?image={iid}&layer=conv9", None), 404, "not a layer of run"),
        (("GET", f"/api/grid?image={iid}&layer=..%2F..%2Fsummary.json", None), 404, "not a layer of run"),
        (("GET", f"/api/grid?image={iid}", None), 400, "lacks layer="),
        (("GET", "/api/grid?image=abc&layer=relu2", None), 400, "not an image id"),
        (("GET", f"/api/grid?image={'0' * 32}&layer=relu2", None), 404, "upload it again"),
        (("GET", f"/api/grid?image={iid}&layer=relu2&run=not-a-run", None), 404, "not a run this server"),
        (("GET", f"/api/unit?image={iid}&layer=relu2&unit=64", None), 404, "relu2 has units 0..63"),
        (("GET", f"/api/unit?image={iid}&layer=relu2&unit=-1", None), 404, "relu2 has units 0..63"),
        (("GET", f"/api/unit?image={iid}&layer=relu2&unit=three", None), 400, "not a unit number"),
        (("GET", f"/api/unit?image={iid}&layer=relu2&unit=1&method=occlusion", None), 400, "use one of deconvnet"),
        (("GET", "/files/not-a-run/summary.json", None), 404, "not a run this server"),
        (("GET", "/no/such/page", None), 404, "no such page"),
    ]
    for (method, path, body), code, words in cases:
        status, answer, ctype = request(server, method, path, body)
        assert status == code and ctype == "application/json", (path, status, answer)
        assert words in answer["error"] and "Traceback" not in answer["error"], (path, answer)
        assert "\n" not in answer["error"]
    status, g, _ = get(server, "/api/grid", image=iid, layer="relu2")  # still serving, the image still held
    assert status == 200 and g["channels"] == 64


def test_path_traversal_is_refused(server, run_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    (run_dir / "layers" / "link.png").symlink_to(secret)  # a link inside the run that leads out of it
    name = run_dir.name
    refused = [f"/files/{name}/../summary.json", f"/files/{name}/../../../../../../etc/passwd",
               f"/files/{name}//etc/passwd",
               f"/files/{name}//{str(secret).lstrip('/')}",
               f"/files/{name}/%2e%2e/%2e%2e/etc/passwd", f"/files/{name}/%2E%2E%2Fsummary.json",
               f"/files/{name}/..%2f..%2fetc%2fpasswd", f"/files/{name}/%2fetc%2fpasswd",
               f"/files/{name}/layers/..\\..\\summary.json", f"/files/{name}/.hydra/config.yaml",
               f"/files/{name}/layers/link.png", f"/files/{name}/layers/relu2/./topk.npz"]
    for path in refused:
        status, answer, ctype = request(server, "GET", path)
        assert 400 <= status < 500 and ctype == "application/json", (path, status, answer)
        assert "SECRET" not in json.dumps(answer) and "root:" not in json.dumps(answer)
    # a refused path names the refusal (403); the absolute one too, not only "not found"
    assert request(server, "GET", f"/files/{name}//etc/passwd")[0] == 403
    assert request(server, "GET", f"/files/{name}/%2e%2e/%2e%2e/etc/passwd")[0] == 403
    for path in ["/files/..%2F..%2Fetc/passwd", "/files/%2e%2e/etc/passwd", "/static/..%2Fcore.py",
                 "/static/../app.py", "/static/%2e%2e%2fapp.py", f"/files/{name}/%252e%252e/summary.json"]:
        status, answer, _ = request(server, "GET", path)
        assert 400 <= status < 500, (path, status)
    # what is allowed still works
    assert request(server, "GET", f"/files/{name}/summary.json")[0] == 200
    assert request(server, "GET", "/static/explore.js")[2].startswith("text/javascript")


def test_concurrent_users_each_get_their_own_image(server, images, reference):
    n = len(images)
    want = {i: reference["peaks"](images[i], "relu5") for i in range(n)}
    assert len({tuple(np.round(w, 4)) for w in want.values()}) == n  # the images do differ
    barrier, got, errors = threading.Barrier(n), {}, []

    def user(i):
        try:
            iid = upload(server, images[i].read_bytes())
            barrier.wait(30)
            for _ in range(2):  # grid, then units, interleaved with the other users'
                status, g, _ = get(server, "/api/grid", image=iid, layer="relu5")
                assert status == 200
                status, u, _ = get(server, "/api/unit", image=iid, layer="relu5", unit=i % 4)
                assert status == 200
            got[i] = (np.array(g["peak"]), u["value"])
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i in range(n):
        np.testing.assert_allclose(got[i][0], want[i], rtol=1e-4, atol=1e-5)
        assert got[i][1] == pytest.approx(float(want[i][i % 4]), rel=1e-4, abs=1e-5)


def test_command_line_refuses_a_folder_that_is_not_a_run_and_warns_for_other_hosts(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([f"run={tmp_path / 'empty'}", "host=0.0.0.0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: host=0.0.0.0 serves the explorer to every machine")
    assert err[1].startswith("error: run=") and "is not a run of scripts/run.py" in err[1] and len(err) == 2
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:  # a port in use: one line, exit 2 (werkzeug alone would exit 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main([str(run_dir), f"port={busy.getsockname()[1]}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot listen on 127.0.0.1:") and "port=" in err[0]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_a_folder_of_runs_lists_the_runs_in_it(run_dir, tmp_path):
    from zf.explore.core import Explorer, RequestError, find_runs

    (tmp_path / "b-run").symlink_to(run_dir)
    (tmp_path / "a-run").symlink_to(run_dir)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "summary.json").write_text("{}")  # no layers/: not a run
    runs = find_runs(tmp_path)
    assert list(runs) == ["a-run", "b-run"]
    ex = Explorer(runs)
    assert ex.run("b-run").layers == LAYERS
    with pytest.raises(RequestError, match="run='notes' is not a run this server was started on") as e:
        ex.run("notes")
    assert e.value.status == 404
    with pytest.raises(RequestError, match="not a run this server"):
        ex.run(None)  # two runs: a request must name one


def test_script_serves_the_run_as_the_readme_says(run_dir):
    """``python scripts/explore.py run=<run> port=0``: a stranger's command, in its own process."""
    import urllib.request

    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    p = subprocess.Popen([sys.executable, str(REPO / "scripts" / "explore.py"), f"run={run_dir}", "port=0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [p.stdout.readline(), p.stdout.readline()]
        assert lines[0].startswith("loading the model of") and lines[1].startswith("zf explorer: http://127.0.0.1:")
        url = lines[1].split()[2]
        with urllib.request.urlopen(url + "/", timeout=30) as r:
            assert r.status == 200 and b"/static/explore.js" in r.read()
        with urllib.request.urlopen(url + "/api/runs", timeout=30) as r:
            runs = json.loads(r.read())["runs"]
        assert [r["name"] for r in runs] == [run_dir.name] and [l["name"] for l in runs[0]["layers"]] == LAYERS
    finally:
        p.terminate()
        p.wait(30)
        p.stdout.close()
        p.stderr.close()


# ---- in the browser -----------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_page_upload_click_unit_projection_and_top9(driver, server, images, reference, run_dir, tmp_path):
    from selenium.webdriver.support.ui import Select

    img = images[2]
    # the rendered unit of relu5 that fires most on this image, and zf's projection of it
    unit = max(UNITS, key=lambda u: reference["peaks"](img, "relu5")[u])
    want, value = reference["projection"](img, "relu5", unit)
    assert value > 0
    driver.set_window_size(1440, 1000)
    driver.get(server.url + "/")
    wait(driver, lambda d: len(Select(d.find_element("id", "layer")).options) == 2)
    assert Select(driver.find_element("id", "layer")).first_selected_option.get_attribute("value") == "relu5"

    # a file that is not an image: a clear message on the page
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    driver.find_element("id", "file").send_keys(str(bad))
    wait(driver, lambda d: d.find_element("id", "error").is_displayed())
    assert "not an image zf can read" in driver.find_element("id", "error").text

    driver.find_element("id", "file").send_keys(str(img))
    wait(driver, lambda d: len(d.find_elements("css selector", "#grid .tile")) == 64, 30)
    assert not driver.find_element("id", "error").is_displayed()
    strongest = driver.find_elements("css selector", "#grid .tile.strongest")
    peaks = reference["peaks"](img, "relu5")
    assert len(strongest) == 1 and int(strongest[0].get_attribute("data-unit")) == int(np.argmax(peaks))
    Select(driver.find_element("id", "sort")).select_by_value("activation")
    order = [int(t.get_attribute("data-unit")) for t in driver.find_elements("css selector", "#grid .tile")]
    assert order[0] == int(np.argmax(peaks)) and np.all(np.diff(peaks[order]) <= 1e-5)

    driver.find_element("css selector", f'#grid .tile[data-unit="{unit}"]').click()
    wait(driver, lambda d: d.find_element("id", "unit-title").text == f"relu5 unit {unit}", 30)
    wait(driver, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#unit-panel img')).every(i => i.complete)"))
    shown = driver.execute_script("return document.getElementById('proj-img').src")
    assert np.abs(decode(shown).astype(int) - want.astype(int)).max() <= 1
    assert driver.execute_script("return document.getElementById('map-img').naturalWidth") == 224
    for grid in ("top-patches", "top-proj"):
        sizes = driver.execute_script(
            f"return Array.from(document.querySelectorAll('#{grid} img')).map(i => i.naturalWidth)")
        assert len(sizes) == 9 and all(s > 0 for s in sizes), (grid, sizes)
    assert driver.find_element("id", "box").is_displayed()
    link = driver.find_element("id", "gallery-link").get_attribute("href")
    assert link.endswith(f"unit_relu5.html#u={unit}&m=deconvnet")

    # the method toggle: guided backpropagation of the same activation
    want_g, _ = reference["projection"](img, "relu5", unit, "guided")
    driver.find_element("css selector", '#methods input[value="guided"]').click()
    wait(driver, lambda d: "guided projection" in d.find_element("id", "proj-caption").text, 30)
    shown = driver.execute_script("return document.getElementById('proj-img').src")
    assert np.abs(decode(shown).astype(int) - want_g.astype(int)).max() <= 1
    driver.find_element("css selector", '#methods input[value="deconvnet"]').click()
    wait(driver, lambda d: "deconvnet projection" in d.find_element("id", "proj-caption").text, 30)

    # picking a unit by number, and a number the layer does not have
    box = driver.find_element("id", "unit-input")
    box.clear()
    box.send_keys("99\n")
    wait(driver, lambda d: d.find_element("id", "error").is_displayed())
    assert "relu5 has units 0..63" in driver.find_element("id", "error").text
    box.clear()
    box.send_keys(f"{unit}\n")
    wait(driver, lambda d: not d.find_element("id", "error").is_displayed(), 30)
    wait(driver, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#unit-panel img')).every(i => i.complete)"))
    assert severe(driver) == [] or all("favicon" in e["message"] or "400" in e["message"] or "404" in e["message"]
                                       or "415" in e["message"] for e in severe(driver))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "explore.png"))
    if os.environ.get("ZF_DOCS_SCREENSHOT"):
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        shot.quantize(256, method=Image.Quantize.MEDIANCUT).save(REPO / "docs" / "figures" / "explorer.png",
                                                                  optimize=True)
