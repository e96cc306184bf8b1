"""A live explorer of a finished main-job run in the browser: any image (upload, drag and drop, one of the run's
images, the camera), every channel of a layer as a grid of activation maps, and for a clicked unit its map over
the image, the projection of its strongest activation on the image (deconvnet, guided backpropagation or the
gradient: ``zf.projection.api.project``, as the main job projects), and its top-9 patches and projections from the run with
a link into the run's static gallery (Zeiler & Fergus 2014, Sec. 2.1 and Fig. 2; the live form of Yosinski et
al.'s Deep Visualization Toolbox, 2015).

    python scripts/explore.py run=outputs/run/<date>                 # http://127.0.0.1:8765
    python scripts/explore.py run=outputs/run port=9000               # a folder of runs: the page picks one
    python scripts/explore.py run=outputs/run/<date> host=0.0.0.0     # other machines too (warns)

``main(argv)`` is the command line (``zf explore RUN`` calls it); ``core`` holds the computations, ``app`` the
Flask server (why Flask: ``zf.explore.app``).  Needs ``pip install 'zf[explore]'`` (Flask).
"""
from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from ..edge.runtime import device_of
from ..errors import ZFError
from .core import Explorer, find_runs

LOOPBACK = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zf explore", description="A live explorer of a main-job run in the browser: "
                                "any image through the run's model, every unit, its projection and its top 9.")
    p.add_argument("run", nargs="?", help="a run directory of scripts/run.py (holds summary.json), or a folder of "
                   "them (also as run=...)")
    p.add_argument("--run", dest="run_opt", help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 serves every network the machine is on, with a warning)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: a free one)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--max-mb", type=float, default=20, help="largest upload in MB (default 20)")
    p.add_argument("--max-megapixels", type=float, default=40, help="largest image in megapixels (default 40)")
    return p


def _argv(argv) -> list[str]:
    """``key=value`` words (as the other scripts take them: ``run=... port=9000``) become ``--key value``."""
    out = []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and not a.startswith("-") and key.replace("_", "-") in ("run", "host", "port", "device", "max-mb",
                                                                      "max-megapixels"):
            out += [f"--{key.replace('_', '-')}", value]
        else:
            out.append(a)
    return out


def _check_port(host: str, port: int) -> None:
    """Raise ``OSError`` if ``host:port`` cannot be listened on (in use, no such address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))


def main(argv=None) -> int:
    """The command line: serve the explorer until Ctrl-C.  A user error (a folder that is not a run, a port in
    use) is one line ``error: ...`` and exit status 2."""
    args = parser().parse_args(_argv(sys.argv[1:] if argv is None else list(argv)))
    run = args.run_opt or args.run
    if not run:
        parser().error("give a run directory: zf explore outputs/run/<date>  (or run=outputs/run/<date>)")
    try:
        from zf.explore.app import Server, create_app, quiet_werkzeug  # Flask: the optional extra 'explore'
    except ImportError as e:
        print(f"error: the explorer needs Flask ({e}): pip install 'zf[explore]'", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        print(f"warning: host={args.host} serves the explorer to every machine that can reach this one on port "
              f"{args.port}; anyone there can send it images and read the run's files. Use the default 127.0.0.1 "
              "unless that is what you want.", file=sys.stderr)
    try:
        explorer = Explorer(find_runs(run), device=device_of(args.device), max_pixels=int(args.max_megapixels * 1e6))
        first = next(iter(explorer.runs.values()))
        print(f"loading the model of {first.path} ...", flush=True)
        first.load()
    except ZFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        _check_port(args.host, args.port)  # werkzeug would print its own lines and exit 1
        server = Server(create_app(explorer, int(args.max_mb * 2 ** 20)), args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port} ({e.strerror or e}); choose another port=...",
              file=sys.stderr)
        return 2
    quiet_werkzeug()
    print(f"zf explorer: {server.url}  ({len(explorer.runs)} run{'s' if len(explorer.runs) > 1 else ''}: "
          f"{', '.join(explorer.runs)}; Ctrl-C stops it)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


__all__ = ["main", "is_loopback"]
