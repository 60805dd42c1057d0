"""A local HTTP server that speaks the part of Roboflow's API the SDK uses to download a dataset version.

Routes (roboflow 1.7.x): POST /?api_key= (key check), GET /{ws}, GET /{ws}/{project} (project and its
versions), GET /{ws}/{project}/{version} (generating state), GET /{ws}/{project}/{version}/{format}
(export link), GET /files/export.zip. `fail` maps a path to statuses to answer before succeeding.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse


def zip_folder(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zipped.writestr(name, data)
    return buffer.getvalue()


@dataclass
class FakeRoboflow:
    workspace: str
    project: str
    version: int
    zip_bytes: bytes
    key: str
    fail: dict[str, list[int]] = field(default_factory=dict)
    generating: bool = False
    stall_s: float = 0.0  # pause halfway through the zip (until released), to kill a download in flight
    half_sent: threading.Event = field(default_factory=threading.Event)  # half the zip is on the wire
    release: threading.Event = field(default_factory=threading.Event)  # ends a stall early
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def __enter__(self) -> FakeRoboflow:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                self._answer("POST")

            def do_GET(self):
                self._answer("GET")

            def _answer(self, method: str) -> None:
                parsed = urlparse(self.path)
                fake.requests.append((method, self.path))
                statuses = fake.fail.get(parsed.path)
                if statuses:
                    self._send(statuses.pop(0), {"error": {"message": "injected failure"}})
                    return
                if parsed.path != "/files/export.zip" and f"api_key={fake.key}" not in parsed.query:
                    self._send(401, {"error": {"message": "This API key does not exist (or has been revoked)."}})
                    return
                self._route(method, parsed.path)

            def _route(self, method: str, path: str) -> None:
                ws, proj, ver = fake.workspace, fake.project, str(fake.version)
                version_dict = {
                    "id": f"{ws}/{proj}/{ver}",
                    "augmentation": {},
                    "created": 1700000000,
                    "images": 0 if fake.generating else 10,
                    "preprocessing": {},
                    "splits": {},
                    "exports": ["yolov8"],
                    "generating": fake.generating,
                    "progress": 0.5,
                }
                project = {
                    "annotation": "threat",
                    "classes": {},
                    "colors": {},
                    "created": 1700000000,
                    "id": f"{ws}/{proj}",
                    "images": 10,
                    "name": proj,
                    "public": False,
                    "splits": {},
                    "type": "object-detection",
                    "unannotated": 0,
                    "updated": 1700000000,
                }
                routes = {
                    ("POST", "/"): {"workspace": ws},
                    ("GET", f"/{ws}"): {"workspace": {"name": ws, "url": ws, "projects": [project["id"]]}},
                    ("GET", f"/{ws}/{proj}"): {"project": project, "versions": [version_dict]},
                    ("GET", f"/{ws}/{proj}/{ver}"): {"version": version_dict},
                    ("GET", f"/{ws}/{proj}/{ver}/yolov8"): {"export": {"link": f"{fake.url}/files/export.zip"}},
                }
                if (method, path) == ("GET", "/files/export.zip"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/zip")
                    self.send_header("Content-Length", str(len(fake.zip_bytes)))
                    self.end_headers()
                    half = len(fake.zip_bytes) // 2
                    self.wfile.write(fake.zip_bytes[:half])
                    self.wfile.flush()
                    fake.half_sent.set()
                    if fake.stall_s:
                        fake.release.wait(fake.stall_s)
                    self.wfile.write(fake.zip_bytes[half:])
                elif (method, path) in routes:
                    self._send(200, routes[(method, path)])
                else:
                    self._send(404, {"error": {"message": f"{path} does not exist"}})

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def reset(self, zip_bytes: bytes) -> None:
        self.zip_bytes, self.fail, self.generating, self.stall_s = zip_bytes, {}, False, 0.0
        self.half_sent.clear()
        self.release.clear()
        self.requests.clear()

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
