"""A local web viewer for results: OHIF (the open-source DICOMweb viewer) served beside a local
Orthanc with its DICOMweb plugin, on one loopback origin.

* OHIF's prebuilt viewer is the ``dist/`` folder of the npm package ``@ohif/app``; it is fetched
  once with ``npm pack`` into a git-ignored cache (``.cache/ohif/<version>``), never committed.
* Our small HTTP server serves that folder with our own ``app-config.js`` (the shipped one
  points at a public demo server), falls back to ``index.html`` for the viewer's routes
  (``/viewer?StudyInstanceUIDs=...``), and proxies ``/dicom-web`` to Orthanc, which sends no
  CORS headers; so the browser talks to one origin and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import http.client
import logging
import mimetypes
import shutil
import subprocess
import tarfile
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .orthanc import Orthanc, free_port, start_orthanc

log = logging.getLogger(__name__)

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
DEFAULT_CACHE = Path(".cache/ohif")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

#: OHIF's configuration: our DICOMweb proxy on the page's own origin, no static WADO, WADO-RS
#: rendering for images and thumbnails, bulk data URIs resolved against our root.
APP_CONFIG = """/** dicom-node: OHIF against the local Orthanc, through our proxy on this origin. */
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'dicom-node local Orthanc',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + '/wado',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def fetch_ohif(cache: Path = DEFAULT_CACHE, version: str = OHIF_VERSION) -> Path:
    """The ``dist/`` folder of ``@ohif/app@version``, fetched with ``npm pack`` on first use."""
    dist = cache / version / "dist"
    if (dist / "index.html").exists():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is needed once to fetch the OHIF viewer (Debian package npm)")
    with tempfile.TemporaryDirectory(prefix="ohif-pack-") as tmp:
        done = subprocess.run([npm, "pack", f"{OHIF_PACKAGE}@{version}", "--silent"], cwd=tmp, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:  # the registry's own words: an operator (or CI's log) can act on them
            raise OSError(f"npm pack {OHIF_PACKAGE}@{version} failed (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()[-2000:]}")
        tarball = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="data")
        target = cache / version
        target.mkdir(parents=True, exist_ok=True)
        staging = target / ".dist.part"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(Path(tmp) / "package" / "dist", staging)
        staging.rename(dist)
    return dist


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("viewer: " + fmt, *args)

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(("/dicom-web/", "/wado")) or path == "/dicom-web":
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, APP_CONFIG.encode(), "application/javascript")
        else:
            self._static(path)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _static(self, path: str) -> None:
        root = self.server.dist
        candidate = (root / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            # Client-side routes (/viewer, /segmentation ...) are the app's index.html.
            if "." in Path(path).name and not path.endswith(".html"):
                self._send(404, b"not found", "text/plain")
                return
            candidate = root / "index.html"
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        if candidate.suffix == ".wasm":
            content_type = "application/wasm"
        self._send(200, candidate.read_bytes(), content_type)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type", "range")}
        connection = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_http_port, timeout=300)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except OSError as exc:
            self._send(502, f"Orthanc unreachable: {exc}".encode(), "text/plain")
            return
        finally:
            connection.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() in ("content-type", "content-disposition"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class ViewerServer(ThreadingHTTPServer):
    """OHIF's files + our app-config + the /dicom-web proxy, on one loopback origin."""

    daemon_threads = True

    def __init__(self, dist: Path, orthanc_http_port: int, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.dist = dist.resolve()
        self.orthanc_http_port = orthanc_http_port
        self._thread = threading.Thread(target=self.serve_forever, name="viewer-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def study_url(self, study_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"

    def start(self) -> ViewerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def start_viewer_stack(workdir: Path, dist: Path, ae_title: str = "ORTHANC", modalities: dict[str, list[Any]] | None = None,
                       dicom_port: int | None = None) -> tuple[Orthanc, ViewerServer]:
    """Orthanc with DICOMweb (its WADO-RS links pointing at our proxy) and the viewer server."""
    if not DICOMWEB_PLUGIN.exists():
        raise FileNotFoundError(f"{DICOMWEB_PLUGIN} missing (Debian package orthanc-dicomweb)")
    viewer_port = free_port()
    orthanc = start_orthanc(workdir, ae_title=ae_title, modalities=modalities, port=dicom_port, extra_config={
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "Host": f"127.0.0.1:{viewer_port}", "Ssl": False},
    })
    try:
        server = ViewerServer(dist, orthanc.http_port, port=viewer_port).start()
    except BaseException:
        orthanc.stop()
        raise
    return orthanc, server
