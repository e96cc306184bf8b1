"""The explorer's web server: a Flask app over ``zf.explore.core.Explorer``, its page and the run's files.

    GET  /                                  the page (``zf/explore/static/index.html``)
    GET  /static/<name>                     its script and style (served by zf: no CDN, no network)
    GET  /api/runs                          the runs this server was started on, with their layers
    POST /api/image                         an image file as the body (or a multipart field ``image``) -> {"id"}
    GET  /api/grid?run=&image=&layer=       every channel's activation map (``Explorer.grid``)
    GET  /api/unit?run=&image=&layer=&unit=&method=   one unit (``Explorer.unit``)
    GET  /files/<run>/<path>                a file of the run folder (patches, projections, sources, gallery)

Every error is JSON ``{"error": "<one line>"}`` with a 4xx status (a bug: 500 with its one line; the traceback goes
to the server's log only, never to the client).  ``/files`` serves only regular files inside the run folder: a path
with ``..``, an absolute path, a backslash or a hidden part (``.hydra``) is refused (403) however it was encoded,
and so is a symbolic link that leads outside.

Why Flask: the explorer is a handful of JSON endpoints and static files around synchronous PyTorch work, which a
threaded WSGI server fits without an event loop; Flask (Pallets, maintained since 2010) brings four small
dependencies (no ASGI server, no pydantic), an upload size limit (``MAX_CONTENT_LENGTH``: 413 before the body is
read), and ``werkzeug.serving.make_server`` starts it on a free port in tests and benchmarks.  Werkzeug's server
is meant for local use, which is what the explorer is: 127.0.0.1 unless asked otherwise.
"""
from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from flask import Flask, jsonify, request, send_file
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from ..errors import ZFError
from .core import Explorer, RequestError, find_runs

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"explore.js": "text/javascript", "explore.css": "text/css"}

log = logging.getLogger("zf.explore")


def safe_file(root: Path, sub: str) -> Path:
    """The regular file ``sub`` (a relative path with ``/``) inside ``root``; ``RequestError`` 403 for anything
    that could leave it (``..``, absolute, backslash, NUL, hidden parts, links out), 404 when there is no file."""
    parts = sub.split("/")
    if (not sub or sub.startswith("/") or "\\" in sub or "\x00" in sub or ":" in parts[0]
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
        raise RequestError(f"path {sub!r} is refused: only files inside the run folder are served", 403)
    root = root.resolve()
    path = (root / sub).resolve()
    if not path.is_relative_to(root):
        raise RequestError(f"path {sub!r} is refused: it leads outside the run folder", 403)
    if not path.is_file():
        raise RequestError(f"the run has no file {sub}", 404)
    return path


def create_app(explorer: Explorer, max_bytes: int = 20 * 2 ** 20) -> Flask:
    """The Flask app serving ``explorer``; uploads over ``max_bytes`` are refused with 413."""
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = int(max_bytes)
    app.url_map.merge_slashes = False  # "/files/run//etc/passwd" reaches safe_file (refused) instead of a redirect
    app.url_map.strict_slashes = False

    def arg(name: str, required: bool = True):
        v = request.args.get(name)
        if required and (v is None or v == ""):
            raise RequestError(f"the request lacks {name}=", 400)
        return v

    @app.before_request
    def refuse_absolute():  # "/files/<run>//etc/passwd" matches no route (a path never starts with "/"): say why
        if request.path.startswith("/files/"):
            sub = request.path[len("/files/"):].partition("/")[2]
            if sub.startswith("/"):
                safe_file(Path("/nonexistent"), sub)  # raises its 403

    @app.get("/")
    def index():
        return send_file(STATIC / "index.html", mimetype="text/html", max_age=0)

    @app.get("/static/<path:name>")
    def static_file(name):
        if name not in STATIC_FILES:
            raise RequestError(f"no static file {name!r}", 404)
        return send_file(STATIC / name, mimetype=STATIC_FILES[name], max_age=0)

    @app.get("/api/runs")
    def runs():
        return jsonify({"runs": [r.info() for r in explorer.runs.values()],
                        "max_mb": round(max_bytes / 2 ** 20, 1),
                        "max_megapixels": explorer.images.max_pixels / 1e6})

    @app.post("/api/image")
    def upload():
        f = request.files.get("image")
        data = f.read() if f is not None else request.get_data(cache=False)
        return jsonify({"id": explorer.images.add(data)})

    @app.get("/api/grid")
    def grid():
        return jsonify(explorer.grid(request.args.get("run"), arg("image"), arg("layer")))

    @app.get("/api/unit")
    def unit():
        return jsonify(explorer.unit(request.args.get("run"), arg("image"), arg("layer"), arg("unit"),
                                     request.args.get("method") or None))

    @app.get("/files/<run>/<path:sub>")
    def files(run, sub):
        r = explorer.run(run)
        return send_file(safe_file(r.path, sub), max_age=0)

    @app.errorhandler(RequestError)
    def request_error(e: RequestError):
        return jsonify({"error": str(e)}), e.status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        msg = e.description
        if e.code == 413:
            msg = f"the upload is larger than {max_bytes / 2 ** 20:g} MB (--max-mb): use a smaller image"
        elif e.code == 404:
            msg = f"no such page: {request.path}"
        return jsonify({"error": msg}), e.code

    @app.errorhandler(ZFError)
    def zf_error(e: ZFError):  # a run whose model cannot be built, a layer the model refuses
        return jsonify({"error": str(e)}), 400

    @app.errorhandler(Exception)
    def bug(e: Exception):
        log.exception("explorer: %s %s failed", request.method, request.full_path)
        return jsonify({"error": f"internal error ({type(e).__name__}): {str(e).splitlines()[0] if str(e) else ''}"
                                 " - see the server's log"}), 500

    return app


class Server:
    """The app on a werkzeug threaded server (one thread per request) in a background thread: ``url``, ``close()``.
    ``port=0`` picks a free port (tests, benchmarks)."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0):
        self.httpd = make_server(host, port, app, threaded=True)
        self.host, self.port = host, self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="zf-explore")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "Server":
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def serve_in_thread(run, host: str = "127.0.0.1", port: int = 0, device="cpu", max_mb: float = 20,
                    max_megapixels: float = 40) -> tuple[Server, Explorer]:
    """Start an explorer on ``run`` (a run folder or a folder of runs) in a background thread; the first run's
    model is loaded before it returns."""
    explorer = Explorer(find_runs(run), device=device, max_pixels=int(max_megapixels * 1e6))
    next(iter(explorer.runs.values())).load()
    server = Server(create_app(explorer, int(max_mb * 2 ** 20)), host, port)
    quiet_werkzeug()
    return server.start(), explorer


def quiet_werkzeug() -> None:
    """Werkzeug logs every request to stderr; keep warnings and errors only."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
