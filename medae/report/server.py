"""``medae view OUT``: serve a scored folder to a browser on this machine.

Only files under ``OUT`` are served, plus the viewer's own files under ``/_medae/`` (from the
package: the case page's script and the vendored NiiVue).  No directory listings; paths that
leave ``OUT`` (``..``, symbolic links pointing outside, a folder's ``index.html`` among them) are
answered 404: the final path is resolved and checked, then opened without following a link and
checked again once open.  The server listens on
a loopback address unless told otherwise with ``allow_remote``: the pages show patients' scans.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import ipaddress
import os
import posixpath
import re
import socket
import stat
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
#: medae's pages (files named index.html or view.html, the viewer's files) may load only what
#: this server serves (and data/blob URLs NiiVue makes itself); their inline scripts are allowed
#: by hash (``_page_csp``), no other inline script runs, and a script file is served as one only
#: from the viewer's own files
CSP = ("default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self' data: blob:; worker-src 'self' blob:; "
       "font-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
#: every other file under OUT (an HTML or SVG file put there included): no script at all, an
#: origin of its own, never framed
FILE_CSP = ("sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
            "frame-ancestors 'none'")
PAGES = ("index.html", "view.html")
#: seconds a connection may stay silent (a half-sent request does not hold a thread for ever)
TIMEOUT_S = 30


def _page_csp() -> str:
    """The pages' CSP, allowing the inline scripts of the packaged templates by their hash."""
    from medae.report.index import static_text

    hashes = []
    for name in PAGES:
        for script in re.findall(r"<script>(.*?)</script>", static_text(name), re.S):
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            hashes.append(f"'sha256-{digest}'")
    return CSP.format(hashes=" ".join(sorted(set(hashes))))


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


def _inside(path: Path, root: Path) -> Path | None:
    """``path`` with every link resolved, when that is inside ``root`` (else None)."""
    try:
        real = path.resolve(strict=True)
        real.relative_to(root.resolve(strict=True))
    except (OSError, ValueError, RuntimeError):
        return None
    return real


class Handler(SimpleHTTPRequestHandler):
    """Files under ``directory`` and the packaged viewer assets; nothing else."""

    assets: Path
    allowed_hosts: frozenset[str] | None = None  # None: any Host header (--allow-remote)
    quiet = True
    page_csp = ""
    timeout = TIMEOUT_S
    _root: Path | None = None
    _csp = FILE_CSP

    def translate_path(self, path: str) -> str:
        """The real path (links resolved) of the file asked for, or "" when it is not a file
        inside the served folder (a folder's ``index.html`` is checked like any other file)."""
        self._root, self._csp = None, FILE_CSP
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
        if target.is_dir():
            target = target / "index.html"  # never a listing
        real = _inside(target, root)  # symbolic links may not lead out of the served folder
        if real is None:
            return ""
        self._root = root
        if root == self.assets or real.name in PAGES:
            self._csp = self.page_csp
        return str(real)

    def list_directory(self, path):  # pragma: no cover - translate_path never asks for one
        self.send_error(404)
        return None

    def _open(self, path: str):
        """The file at ``path`` (no link followed, only a regular file), checked once open to be
        the one inside the served folder; None when not."""
        if not path or self._root is None:
            return None
        flags = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_CLOEXEC", 0))
        try:
            fd = os.open(path, flags)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError("not a regular file")
            opened = Path(f"/proc/self/fd/{fd}")
            if opened.exists() and _inside(Path(os.readlink(opened)), self._root) is None:
                raise OSError("moved out of the served folder")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb"), st
        except OSError:
            os.close(fd)
            return None

    def send_head(self):
        if self.allowed_hosts is not None:  # DNS rebinding: a page elsewhere naming our port
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in self.allowed_hosts:
                self.send_error(403, "unexpected Host header")
                return None
        path = self.translate_path(self.path)
        opened = self._open(path)
        if opened is None:
            self.send_error(404)
            return None
        f, st = opened
        try:
            self.send_response(200)
            self.send_header("Content-type", self.guess_type(path))
            self.send_header("Content-Length", str(st.st_size))
            self.send_header("Last-Modified", self.date_time_string(st.st_mtime))
            self.end_headers()
        except BaseException:
            f.close()
            raise
        return f

    def send_error(self, *args, **kw):
        self._csp = FILE_CSP
        super().send_error(*args, **kw)

    def end_headers(self):
        self.send_header("Content-Security-Policy", self._csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def guess_type(self, path):
        if str(path).endswith((".js", ".mjs")):  # a script only from the viewer's own files
            # (with nosniff, a browser runs no script file put into OUT)
            return "text/javascript" if self._root == self.assets else "application/octet-stream"
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
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise MedaeError(f"--port {port}: expected a port number from 0 to 65535 (0: any free "
                         "one)")
    assets = Path(str(resources.files("medae.report").joinpath("static"))).resolve()
    # the Host check stays on a loopback address even with --allow-remote (DNS rebinding)
    allowed = (None if allow_remote and not is_loopback(host)
               else frozenset({"localhost", "127.0.0.1", "::1", host.lower().strip("[]")}))
    handler = type("MedaeHandler", (Handler,), {"assets": assets, "allowed_hosts": allowed,
                                                 "quiet": quiet, "page_csp": _page_csp()})
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
    except (OverflowError, ValueError) as exc:
        raise MedaeError(f"cannot listen on {host}:{port}: {exc}") from None


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
