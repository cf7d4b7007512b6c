"""The HTTP gateway: the browser's and scripts' door to the chain, holding no file access.

Every endpoint turns into one wire request sent, with the caller's session token as
``pid``, through the proxy to the manager, which checks the session and hands the work to
the user's own worker; errors come back typed and leave as ``{"error": {code, message}}``
with the status of `status.STATUS_BY_CODE`. The gateway serves the viewer's static files
and nothing else from disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from zlib_ng import gzip_ng

from imageserver import metrics
from imageserver.config import Settings
from imageserver.errors import BusyError, ChainError
from imageserver.imaging.colormaps import COLORMAPS
from imageserver.web.chain_client import ChainClient, ChainReply
from imageserver.web.jobs import JobTable
from imageserver.web.meta import si_geometry
from imageserver.web.sessions import (
    COOKIE_NAME,
    SessionLimiter,
    session_hash,
    session_token,
    usable_token,
)
from imageserver.web.status import http_status

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
API = "/api/v1"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
IMAGE_MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "raw": "application/octet-stream"}
RAW_GZIP_LEVEL = 1
"""Fast and enough: a reduced view of counts is mostly small numbers."""

Esaf = Annotated[int, Query(ge=0, description="the ESAF (experiment) number; 0: none")]
Frame = Annotated[int, Query(ge=1, description="frame number, from 1")]
FilePath = Annotated[str, Query(min_length=1, max_length=4096, description="absolute file path")]
DirPath = Annotated[str, Query(min_length=1, max_length=4096, description="absolute directory")]


class IndexJobBody(BaseModel):
    """What to index: ``files`` (a run of single-image files), or ``path`` (a master, or
    one file of a run) with ``first_frame``–``last_frame``."""

    model_config = ConfigDict(extra="forbid")

    esaf: int = Field(0, ge=0)
    files: list[str] | None = Field(None, min_length=1, max_length=10000)
    path: str | None = Field(None, min_length=1, max_length=4096)
    first_frame: int | None = Field(None, ge=1)
    last_frame: int | None = Field(None, ge=1)

    def wire_inputs(self) -> dict[str, Any]:
        if self.files:
            return {"files": self.files}
        if not self.path:
            raise ChainError("bad_request", "give files, or a path (with first_frame, last_frame)")
        inputs: dict[str, Any] = {"fn1": self.path}
        if self.first_frame:
            inputs |= {"frame1": self.first_frame, "frame2": self.last_frame or self.first_frame}
        return inputs


class Gateway:
    """What the endpoints share: the chain client, the per-session limiter, the index jobs,
    the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limiter = SessionLimiter(settings.web.session_concurrency, settings.web.session_queue)
        self.client: ChainClient | None = None
        self.jobs = JobTable(lambda: self.client, settings.web.index_timeout_s)

    def token(self, request: Request) -> str:
        token = session_token(request)
        if token is None:
            raise ChainError("session_invalid", "not logged in: open the login link again")
        return token

    async def ask(self, request: Request, job: dict[str, Any]) -> ChainReply:
        """One wire request with the caller's session; ChainError when refused."""
        token = self.token(request)
        assert self.client is not None
        try:
            async with self.limiter.turn(token) as waited:
                if waited and await request.is_disconnected():
                    raise ChainError("cancelled", "the client went away while waiting")
                return await self.client.request(
                    {**job, "pid": token}, timeout_s=self.settings.web.request_timeout_s
                )
        except BusyError as exc:
            raise ChainError(exc.code, f"busy: {exc}; please retry") from None


def create_app(settings: Settings, *, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The app; ``on_ready`` is called once it can serve (its socket is already bound)."""
    gateway = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        gateway.client = ChainClient(settings.proxy.front_endpoint)
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await gateway.jobs.close()
            await gateway.client.close()

    app = FastAPI(
        title="imageserver",
        summary="Diffraction images, metadata and datasets of a beamline, for the user's session",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.add_middleware(SecurityAndAccessLog)
    app.add_exception_handler(ChainError, _chain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    _add_pages(app, gateway)
    _add_api(app, gateway)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# -- pages and login ---------------------------------------------------------------------------


def _add_pages(app: FastAPI, gateway: Gateway) -> None:
    @app.get("/", include_in_schema=False)
    async def viewer() -> Response:
        return _static_page("index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return _static_page("docs.html")

    @app.get("/login", include_in_schema=False)
    async def login(request: Request, session: str = "", next: str = "/") -> Response:
        """Check the token once, keep it in an HttpOnly cookie, and leave the URL behind."""
        token = usable_token(session)
        if token is None:
            return _login_failed("The login link has no session in it.")
        assert gateway.client is not None
        try:
            await gateway.client.request(
                {"type": "whoami", "pid": token}, timeout_s=gateway.settings.web.request_timeout_s
            )
        except ChainError as exc:
            log.info("login refused: session %s: %s", session_hash(token), exc.wire_code)
            return _login_failed(
                "This login link is not valid any more (the session expired or was "
                "revoked). Open a new link from your beamline's web page."
                if exc.wire_code in ("session_invalid", "access_denied", "account_unusable")
                else f"The image service could not check the session: {exc.message}",
                status=http_status(exc.wire_code),
            )
        log.info("login: session %s", session_hash(token))
        response = RedirectResponse(_same_site_path(next), status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            token,
            httponly=True,
            samesite="strict",
            secure=gateway.settings.web.https,
            path="/",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout() -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/")
        return response


def _static_page(name: str) -> Response:
    path = STATIC_DIR / name
    if not path.is_file():
        return HTMLResponse("<h1>The viewer is not installed.</h1>", status_code=404)
    return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})


def _login_failed(message: str, *, status: int = 401) -> Response:
    page = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Not logged in</title>"
        f"<h1>Not logged in</h1><p>{_html_escape(message)}</p></html>"
    )
    return HTMLResponse(page, status_code=status)


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _same_site_path(target: str) -> str:
    """Only a path of this site: never an open redirect to another host."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(ch) < 32 for ch in target):
        return "/"
    return target


# -- the API -----------------------------------------------------------------------------------


def _add_api(app: FastAPI, gateway: Gateway) -> None:
    @app.get(f"{API}/whoami", summary="The session's login and the ESAFs it may see")
    async def whoami(request: Request) -> Response:
        reply = await gateway.ask(request, {"type": "whoami"})
        return _json_document(reply)

    @app.get(f"{API}/files", summary="Sub-directories and datasets of a directory")
    async def files(request: Request, dir: DirPath, esaf: Esaf = 0) -> Response:
        reply = await gateway.ask(request, {"type": "list", "esaf": esaf, "dir": dir})
        return _json_document(reply)

    @app.get(f"{API}/latest", summary="The newest dataset of a directory and its newest frame")
    async def latest(request: Request, dir: DirPath, esaf: Esaf = 0) -> Response:
        reply = await gateway.ask(request, {"type": "latest", "esaf": esaf, "dir": dir})
        return _json_document(reply, cache="no-store")

    @app.get(f"{API}/meta", summary="Detector geometry and frame range, SI units")
    async def meta(request: Request, path: FilePath, esaf: Esaf = 0, frame: Frame = 1) -> Any:
        reply = await gateway.ask(
            request, {"type": "meta", "esaf": esaf, "fn": path, "frame": frame}
        )
        return JSONResponse(si_geometry(reply.json(), path=path), headers=_PRIVATE)

    @app.get(f"{API}/spots", summary="The quick spot count of a frame (radial shells)")
    async def spots(request: Request, path: FilePath, esaf: Esaf = 0, frame: Frame = 1) -> Any:
        reply = await gateway.ask(
            request, {"type": "spots", "esaf": esaf, "fn": path, "frame": frame}
        )
        document = reply.json()
        return JSONResponse(
            {"path": path, "frame": frame, "spots": document.get("spots")}, headers=_PRIVATE
        )

    @app.post(
        f"{API}/jobs/index",
        status_code=202,
        summary="Start autoindexing (DIALS, or the site's indexer) of a dataset's frames",
    )
    async def start_index(request: Request, body: IndexJobBody) -> Any:
        token = gateway.token(request)
        try:
            job = gateway.jobs.start(token, body.esaf, body.wire_inputs())
        except BusyError as exc:
            raise ChainError(exc.code, str(exc)) from None
        return JSONResponse(job.as_json(), status_code=202, headers={"Cache-Control": "no-store"})

    @app.get(f"{API}/jobs/{{job_id}}", summary="How an index job stands; its result at the end")
    async def index_job(request: Request, job_id: str) -> Any:
        document = await gateway.jobs.status(functools.partial(gateway.ask, request), job_id)
        return JSONResponse(document, headers={"Cache-Control": "no-store"})

    @app.post(f"{API}/jobs/{{job_id}}/cancel", summary="Stop an index job")
    async def cancel_index_job(request: Request, job_id: str) -> Any:
        ask = functools.partial(gateway.ask, request)
        document = await gateway.jobs.status(ask, job_id)
        if document["state"] in ("queued", "starting", "running"):
            await gateway.jobs.cancel(ask, job_id)
            document = await gateway.jobs.status(ask, job_id)
        return JSONResponse(document, headers={"Cache-Control": "no-store"})

    @app.get(
        f"{API}/analysis",
        summary="Spots and DIALS's per-image numbers of a frame (dispersion spot finder)",
    )
    async def analysis(
        request: Request,
        path: FilePath,
        esaf: Esaf = 0,
        frame: Frame = 1,
        d_min: Annotated[float | None, Query(gt=0, description="high resolution limit, Å")] = None,
        d_max: Annotated[float | None, Query(gt=0, description="low resolution limit, Å")] = None,
        algorithm: Annotated[
            str, Query(pattern="^(dispersion_extended|dispersion)$")
        ] = "dispersion_extended",
        filter_ice: bool = True,
    ) -> Response:
        job: dict[str, Any] = {
            "type": "analysis",
            "esaf": esaf,
            "fn": path,
            "frame": frame,
            "algorithm": algorithm,
            "filter_ice": filter_ice,
        }
        job.update({name: value for name, value in (("d_min", d_min), ("d_max", d_max)) if value})
        reply = await gateway.ask(request, job)
        return _json_document(reply, cache="private, max-age=10")

    @app.get(
        f"{API}/image",
        summary="A view of a frame: JPEG, PNG, or the reduced view at full depth (raw)",
        response_class=Response,
    )
    async def image(
        request: Request,
        path: FilePath,
        esaf: Esaf = 0,
        frame: Frame = 1,
        size: Annotated[int, Query(ge=8, le=10000, description="width in px")] = 1024,
        zoom: Annotated[float, Query(ge=1, le=64, description="magnification")] = 1.0,
        x: Annotated[float, Query(ge=-64, le=64, description="tile column at this zoom")] = 0,
        y: Annotated[float, Query(ge=-64, le=64, description="tile row at this zoom")] = 0,
        black: Annotated[
            int | None, Query(ge=1, description="counts at and above are black")
        ] = None,
        white: Annotated[
            int | None, Query(ge=0, description="counts at and below are white")
        ] = None,
        colormap: Annotated[str, Query(pattern="^[a-z]+$")] = "grey",
        format: Annotated[str, Query(pattern="^(jpeg|png|raw)$")] = "jpeg",
        quality: Annotated[int, Query(ge=1, le=100)] = 90,
    ) -> Response:
        if colormap not in COLORMAPS:
            raise ChainError("bad_request", f"unknown colormap {colormap!r}")
        job: dict[str, Any] = {
            "type": "jpeg",
            "esaf": esaf,
            "fn": path,
            "frame": frame,
            "xsize": size,
            "zoom": zoom,
            "segcol": x,
            "segrow": y,
            "contrast": black if black is not None else 0,
            "wval": white if white is not None else -1,
            "colormap": colormap,
            "format": format,
            "quality": quality,
        }
        if black is None or white is None:
            job["levels"] = "percentile"
        reply = await gateway.ask(request, job)
        if reply.data is None:
            raise ChainError("internal", "the image service sent no image")
        headers = {**_PRIVATE, **_view_headers(reply)}
        body = reply.data
        if format == "raw" and "gzip" in request.headers.get("accept-encoding", ""):
            body = await asyncio.to_thread(gzip_ng.compress, body, RAW_GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
        return Response(body, media_type=IMAGE_MEDIA_TYPES[format], headers=headers)


_PRIVATE = {"Cache-Control": "private, max-age=10"}


def _json_document(reply: ChainReply, *, cache: str = "private, max-age=2") -> Response:
    return Response(
        reply.document or b"{}", media_type="application/json", headers={"Cache-Control": cache}
    )


def _view_headers(reply: ChainReply) -> dict[str, str]:
    """What the viewer needs beside the pixels: levels used, statistics, frame range."""
    meta = reply.json()
    job = reply.job
    fields = {
        "X-Frame": meta.get("frame"),
        "X-First-Frame": meta.get("first_frame"),
        "X-Last-Frame": meta.get("last_frame"),
        "X-Level-Black": job.get("bval_used"),
        "X-Level-White": job.get("wval_used"),
        "X-View-Mean": meta.get("mean"),
        "X-View-Stddev": meta.get("stddev"),
        "X-View-Min": meta.get("min"),
        "X-View-Max": meta.get("max"),
        "X-View-Saturated": meta.get("nSaturated"),
    }
    window = job.get("window")
    if isinstance(window, list) and len(window) == 4:
        fields["X-Source-Window"] = ",".join(str(value) for value in window)
    raw = job.get("raw")
    if isinstance(raw, dict):
        fields["X-Raw-Dtype"] = raw.get("dtype")
        fields["X-Raw-Shape"] = f"{raw.get('height')},{raw.get('width')}"
    return {name: str(value) for name, value in fields.items() if value is not None}


# -- errors, security headers, access log ------------------------------------------------------


async def _chain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ChainError)
    return _error_response(exc.wire_code, exc.message)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return _error_response("bad_request", "; ".join(problems) or "invalid request")


RETRY_AFTER_S = 1
"""What a 503 tells the client to wait: the chain's busy spells and lost nodes pass in
seconds (the broker answers a lost node's requests within its 1.5 s node timeout)."""


def _error_response(code: str, message: str) -> Response:
    status = 499 if code == "cancelled" else http_status(code)
    headers = {"Cache-Control": "no-store"}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


class SecurityAndAccessLog:
    """Every response gets the security headers; every request one log line without a
    token (the login URL's query is never logged): failures at INFO, the rest at DEBUG
    (a line costs a fifth of the gateway's own time per request), and its count and
    latency by route and status in the metrics. Plain ASGI: no extra task per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                present = {name for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in self._headers if name not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            metrics.gateway_http_request(_route(scope), status, time.perf_counter() - started)
            level = logging.DEBUG if 200 <= status < 400 else logging.INFO
            if log.isEnabledFor(level):
                _log_request(level, scope, status, started)


def _route(scope: Scope) -> str:
    """The matched route's template (``/api/v1/jobs/{job_id}``, ``/static``), never the raw
    path, so the metrics' labels stay few; "unmatched" for a 404 of no route."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


def _log_request(level: int, scope: Scope, status: int, started: float) -> None:
    request = Request(scope)
    token = session_token(request)
    path = scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    shown = f"{path}?{query}" if query and path != "/login" else path
    log.log(
        level,
        "%s %s %d %.1f ms session=%s",
        scope["method"],
        shown,
        status,
        (time.perf_counter() - started) * 1000,
        session_hash(token) if token else "-",
    )
