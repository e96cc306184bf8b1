"""A local HTTP server for the download tests: serves fixed files from memory on 127.0.0.1, counts every request,
and can drop the connection half way through chosen GETs of a file (a download cut off).

torchvision's ``download_url`` makes two GETs per download: a redirect probe (which reads only the headers), then
the download itself."""
from __future__ import annotations

import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


class Server:
    def __init__(self, files: dict[str, bytes] | None = None):
        self.files = dict(files or {})
        self.requests: list[tuple[str, str]] = []
        self.drops: dict[str, set[int]] = {}  # path -> the GETs (1, 2, ...) of it cut off half way
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self, body: bool):
                server.requests.append((self.command, self.path))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not body:
                    return
                if server.gets(self.path) in server.drops.get(self.path, ()):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the server drops the connection half way
                    return
                self.wfile.write(data)

            def do_GET(self):
                self._serve(True)

            def do_HEAD(self):
                self._serve(False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, path: str | None = None) -> int:
        return sum(1 for c, p in self.requests if c == "GET" and (path is None or p == path))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


WNIDS = ("n01440764", "n02102040")  # tench, English springer


def imagenette_tarball(top: str = "imagenette2-320", per_class: int = 2, extra: dict[str, bytes] | None = None
                       ) -> bytes:
    """A tiny tarball shaped like fast.ai's imagenette2-320.tgz: ``<top>/{train,val}/<wnid>/*.JPEG`` with 320 px
    shorter sides (landscape and portrait), and ``noisy_imagenette.csv``; ``extra`` adds members by name."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, data: bytes):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for split in ("train", "val"):
            for c, wnid in enumerate(WNIDS):
                for i in range(per_class):
                    img = io.BytesIO()
                    size = (426, 320) if i % 2 == 0 else (320, 480)
                    Image.new("RGB", size, (40 + 100 * c, 20 * i, 200 - 80 * c)).save(img, "JPEG")
                    add(f"{top}/{split}/{wnid}/{wnid}_{i}.JPEG", img.getvalue())
        add(f"{top}/noisy_imagenette.csv", b"path,noisy_labels_0\n")
        for name, data in (extra or {}).items():
            add(name, data)
    return buf.getvalue()
