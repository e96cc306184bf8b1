"""Time the static gallery against plain baselines in the same process (no timed assertions live in the tests).

- build: ``build_gallery`` on a fabricated run of N units (tests/test_gallery.py's ``fabricate_run``) against
  listing the run's PNG folders once (the least any build must do).
- load: the layer page in headless Chromium, from navigation start until every thumbnail on the first screen is
  decoded, against a bare HTML page holding the same first-screen thumbnails as plain <img> tags.

    .venv/bin/python benchmarks/bench_gallery.py --units 512 --repeat 3

Needs Debian's chromium and chromium-driver for the load part (ZF_CHROMIUM / ZF_CHROMEDRIVER elsewhere); without
them it reports the build part only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_gallery import fabricate_run  # noqa: E402

from zf.views.gallery import build_gallery, layer_page  # noqa: E402

FIRST_SCREEN = """
    var done = arguments[arguments.length - 1];
    (function poll() {
      var h = window.innerHeight, imgs = Array.from(document.querySelectorAll('img')).filter(
          function (i) { var r = i.getBoundingClientRect(); return r.top < h && r.bottom > 0; });
      if (document.readyState === 'complete' && imgs.length > 0 &&
          imgs.every(function (i) { return i.complete && i.naturalWidth > 0; }))
        done([performance.now(), imgs.length]);
      else requestAnimationFrame(poll);
    })();"""


def driver(profile: Path):
    chromium = Path(os.environ.get("ZF_CHROMIUM", "/usr/bin/chromium"))
    chromedriver = Path(os.environ.get("ZF_CHROMEDRIVER", "/usr/bin/chromedriver"))
    if not (chromium.exists() and chromedriver.exists()):
        print(f"load: skipped, needs {chromium} and {chromedriver} (apt-get install chromium chromium-driver)")
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--window-size=1280,900", f"--user-data-dir={profile}"]:
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=str(chromedriver)), options=opts)


def first_screen_ms(d, uri: str) -> tuple[float, int]:
    d.get("about:blank")
    d.get(uri)
    d.set_script_timeout(120)
    ms, n = d.execute_async_script(FIRST_SCREEN)
    return ms, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        layers = {"conv5": dict(units=list(range(args.units)), rf=11, stride=16, offset=-3, size=13,
                                channels=args.units)}
        run = fabricate_run(tmp / "run", layers=layers, methods=["deconvnet"], n_images=64, short=None,
                            missing=None, dead={})
        build, listing = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            build_gallery(run)
            build.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for sub in ("patches", "deconvnet", "units"):
                os.listdir(run / "layers" / "conv5" / sub)
            listing.append(time.perf_counter() - t0)
        b, l = statistics.median(build), statistics.median(listing)
        print(f"build_gallery, {args.units} units: {b * 1e3:.1f} ms, {b / l:.1f}x listing its PNG folders "
              f"({l * 1e3:.2f} ms)")

        d = driver(tmp / "profile")
        if d is None:
            return
        try:
            page = (run / "gallery" / layer_page("conv5")).as_uri()
            ms, n = first_screen_ms(d, page)  # warm-up: the browser's first page load
            # the baseline: the same first-screen thumbnails (rank-0 projection and patch) as a bare page
            g = run / "gallery"
            imgs = "".join(f'<img src="../layers/conv5/{k}/u{u:04d}_r0.png" width="64" height="64">'
                           for u in range(min(args.units, max(n // 2, 1))) for k in ("deconvnet", "patches"))
            (g / "bare.html").write_text(f"<!DOCTYPE html><html><body style='margin:0'>{imgs}</body></html>")
            bare_uri = (g / "bare.html").as_uri()
            gal, bare = [], []
            for _ in range(args.repeat):
                gal.append(first_screen_ms(d, page)[0])
                bare.append(first_screen_ms(d, bare_uri)[0])
            gm, bm = statistics.median(gal), statistics.median(bare)
            print(f"layer page, {args.units} units: first screen ({n} thumbnails) decoded {gm:.0f} ms after "
                  f"navigation start, {gm / bm:.2f}x a bare page of the same thumbnails ({bm:.0f} ms)")
        finally:
            d.quit()


if __name__ == "__main__":
    main()
