"""``medae view OUT``: serve a scored folder to a browser on this machine.

Only files under ``OUT`` are served, plus the viewer's own files under ``/_medae/`` (from the
package: the case page's script and the vendored NiiVue).  No directory listings; paths that
leave ``OUT`` (``..``, symbolic links pointing outside) are answered 404.  The server listens on
a loopback address unless told otherwise with ``allow_remote``: the pages show patients' scans.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import posixpath
import socket
import sys
import webbrowser
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from medae.errors import MedaeError

DEFAULT_PORT = 8765
ASSETS = "/_medae/"
#: the pages may load only what this server serves (and data/blob URLs NiiVue makes itself)
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self' data: blob:; worker-src 'self' blob:; "
       "font-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    if not is_loopback(host) and not allow_remote:
        raise MedaeError(f"--host {host}: not a loopback address; anyone who can reach this "
                         "machine could see the scans (add --allow-remote to serve them anyway)")


class Handler(SimpleHTTPRequestHandler):
    """Files under ``directory`` and the packaged viewer assets; nothing else."""

    assets: Path
    allowed_hosts: frozenset[str] | None = None  # None: any Host header (--allow-remote)
    quiet = True

    def translate_path(self, path: str) -> str:
        try:
            path = unquote(urlsplit(path).path, errors="strict")
        except (UnicodeDecodeError, ValueError):
            return ""
        root, rel = Path(self.directory), path
        if path.startswith(ASSETS):
            root, rel = self.assets, path[len(ASSETS):]
        parts = [p for p in posixpath.normpath("/" + rel).split("/") if p]
        if any(p in (".", "..") or "\0" in p or os.sep in p for p in parts):
            return ""
        target = root.joinpath(*parts)
        try:  # symbolic links may not lead out of the served folder
            target.resolve(strict=True).relative_to(root.resolve())
        except (OSError, ValueError):
            return ""
        if target.is_dir():
            target = target / "index.html"  # never a listing
        return str(target)

    def list_directory(self, path):  # pragma: no cover - translate_path never asks for one
        self.send_error(404)
        return None

    def send_head(self):
        if self.allowed_hosts is not None:  # DNS rebinding: a page elsewhere naming our port
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in self.allowed_hosts:
                self.send_error(403, "unexpected Host header")
                return None
        path = self.translate_path(self.path)
        if not path or not os.path.isfile(path):
            self.send_error(404)
            return None
        return super().send_head()

    def end_headers(self):
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def guess_type(self, path):
        if str(path).endswith((".js", ".mjs")):
            return "text/javascript"
        if str(path).endswith(".gz"):
            return "application/octet-stream"  # served as bytes, never decoded by the browser
        return super().guess_type(path)

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def make_server(folder: str | os.PathLike, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                *, allow_remote: bool = False, quiet: bool = True) -> ThreadingHTTPServer:
    """A server for ``folder`` bound to ``host:port`` (port 0: any free one); not started."""
    folder = Path(folder)
    if not (folder / "index.html").is_file():
        raise MedaeError(folder, "no index.html here: not an output folder of medae score "
                                 "(or scored before medae wrote reports; score it again with "
                                 "--continue)")
    check_host(host, allow_remote)
    assets = Path(str(resources.files("medae.report").joinpath("static")))
    allowed = None if allow_remote else frozenset({"localhost", "127.0.0.1", "::1", host.lower()})
    handler = type("MedaeHandler", (Handler,), {"assets": assets, "allowed_hosts": allowed,
                                                 "quiet": quiet})
    server_cls = ThreadingHTTPServer
    if ":" in host:
        server_cls = type("V6Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    try:
        return server_cls((host.strip("[]"), port), partial(handler, directory=str(folder)))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MedaeError(f"port {port} on {host} is in use (choose another with --port, "
                             "or --port 0 for any free one)") from None
        raise MedaeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


def serve(folder: str | os.PathLike, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
          allow_remote: bool = False, open_browser: bool = True, quiet: bool = True) -> int:
    """Serve until Ctrl-C; returns 0."""
    server = make_server(folder, host, port, allow_remote=allow_remote, quiet=quiet)
    url = url_of(server)
    print(f"serving {folder} at {url} (Ctrl-C stops)", flush=True)
    if open_browser:
        with contextlib.suppress(Exception):
            webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
