"""The labelling page's HTTP server: the standard library's ``ThreadingHTTPServer``.

Routes (JSON unless said otherwise; ``client`` is the page's id, one per browser tab):

=============================  ====================================================
``GET /``                      the page (``static/index.html``)
``GET /api/next?client=ID``    the frame to label now, with the state summary
``GET /api/state?client=ID``   the state summary (counts, model, accuracy, features)
``GET /img/ROW/KIND.png``      ``raw``, ``cnn`` or ``view`` image of frame ``ROW``
``POST /api/label``            ``{"client", "row", "label"}``: save, return the next frame
``POST /api/skip``             ``{"client", "row"}``: skip, return the next frame
``POST /api/undo``             ``{"client"}``: take back the last answer, return that frame
=============================  ====================================================
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from hpcdiff.errors import HpcdiffError
from hpcdiff.label.frames import RunFrames
from hpcdiff.label.state import LabellingSession, Offer

log = logging.getLogger("hpcdiff.label")

_IMAGE_KINDS = ("raw", "cnn", "view")


class LabelApp:
    """What the handlers serve: the session (labels, offers) and the run's frames."""

    def __init__(self, session: LabellingSession, frames: RunFrames, *, title: str = "") -> None:
        self.session = session
        self.frames = frames
        self.title = title
        self.page = resources.files("hpcdiff.label").joinpath("static/index.html").read_bytes()

    def offer_json(self, cid: str, offer: Offer) -> dict[str, Any]:
        s = self.session
        frame = None
        if offer.row is not None:
            fid = s.frame_ids[offer.row]
            frame = {
                "row": offer.row,
                "file": fid.file,
                "index": fid.index,
                "reason": offer.reason,
                "proba": None if offer.proba is None else list(offer.proba),
                "label": s.labels.get(offer.row),
            }
        return {"frame": frame, "state": s.summary(cid), "scheme": self.scheme_json()}

    def scheme_json(self) -> dict[str, Any]:
        sc = self.session.scheme
        return {
            "target": sc.target,
            "classes": [
                {"name": n, "key": k} for n, k in zip(sc.class_names, sc.keys, strict=True)
            ],
            "title": self.title,
        }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ helpers
    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        if n > 1 << 16:
            raise ValueError("request body too large")
        data = json.loads(self.rfile.read(n) or b"{}")
        if not isinstance(data, dict):
            raise ValueError("request body must be a JSON object")
        return data

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:
        app = self.server.app
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        cid = str(query.get("client", "default"))[:64]
        parts = [p for p in url.path.split("/") if p]
        try:
            if not parts or parts == ["index.html"]:
                self._send(HTTPStatus.OK, app.page, "text/html; charset=utf-8")
            elif parts == ["api", "next"]:
                self._json(app.offer_json(cid, app.session.next(cid)))
            elif parts == ["api", "state"]:
                self._json({"state": app.session.summary(cid), "scheme": app.scheme_json()})
            elif len(parts) == 3 and parts[0] == "img" and parts[2].endswith(".png"):
                kind = parts[2][:-4]
                if kind not in _IMAGE_KINDS:
                    self._error(HTTPStatus.NOT_FOUND, f"no image kind {kind!r}")
                    return
                png = app.frames.pngs(int(parts[1]))[kind]
                self._send(HTTPStatus.OK, png, "image/png")
            elif parts == ["favicon.ico"]:
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        except (ValueError, IndexError, KeyError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except (HpcdiffError, OSError) as exc:
            log.exception("request %s failed", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))

    def do_POST(self) -> None:
        app = self.server.app
        parts = [p for p in urlparse(self.path).path.split("/") if p]
        try:
            body = self._body()
            cid = str(body.get("client", "default"))[:64]
            if parts == ["api", "label"]:
                offer = app.session.answer(cid, int(body["row"]), int(body["label"]))
            elif parts == ["api", "skip"]:
                offer = app.session.skip(cid, int(body["row"]))
            elif parts == ["api", "undo"]:
                offer = app.session.undo(cid)
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such action: {self.path}")
                return
            self._json(app.offer_json(cid, offer))
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"bad request: {exc}")
        except (HpcdiffError, OSError) as exc:
            log.exception("request %s failed", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"could not save: {exc}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: LabelApp) -> None:
        self.app = app
        super().__init__(address, _Handler)


def make_server(app: LabelApp, *, host: str = "127.0.0.1", port: int = 8765) -> _Server:
    """A server for ``app`` bound to ``host:port`` (port 0: any free port); call
    ``serve_forever()`` on it, ``shutdown()`` from another thread to stop."""
    return _Server((host, int(port)), app)
