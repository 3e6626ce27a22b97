"""`cifarkit serve`: a local web page and JSON API for one trained model and its runs.

FastAPI on uvicorn; the page is one static HTML file with plain JS (`static/index.html`).
Every prediction goes through the one inference path (`Classifier.logits`, via the `Batcher`)
and comes back as the records `cifarkit predict --json` prints; uploads are decoded by the
same `data.decode.load_rgb` as files on disk, so decompression bombs and broken files are
refused the same way. Bad input is a 4xx JSON `{"detail": "<one sentence>"}`; nothing a client
sends is ever used as a path.

Memory is bounded across requests, not only per request: decoded pixels held by all requests
together are capped (`budget.PixelBudget`, --max-decoded-mpx; a request decodes and runs its
images in chunks that fit), a forward pass takes at most `batcher.FORWARD_PIXELS`, and run logs
are read as a bounded tail (`runs.read_log`). Files under --runs are opened once, by descriptor,
never through a symlink (`runs.RunsFolder`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cifarkit.cam import METHODS, compute_cam, overlay
from cifarkit.config import config_to_dict
from cifarkit.data.decode import DECODE_MAX_SIDE, load_rgb
from cifarkit.errors import CifarkitError, DataError
from cifarkit.options import DEVICE_DEFAULT, TTA_LEVELS
from cifarkit.predict import Classifier, check_topk, load, to_uint8_chw
from cifarkit.safepath import safe_component
from cifarkit.serve.batcher import Batcher, Overloaded
from cifarkit.serve.budget import PixelBudget
from cifarkit.serve.limits import Limits, check_limits, check_port
from cifarkit.serve.runs import (
    RunsFolder,
    eval_split,
    open_regular,
    pct,
    read_log_lines,
    run_curves,
    run_summary,
    stream_fd,
)

STATIC = Path(__file__).resolve().parent / "static"
TTA = Literal[TTA_LEVELS]  # type: ignore[valid-type]  # options.TTA_LEVELS, for the OpenAPI schema
UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


IMAGE_PIXELS = DECODE_MAX_SIDE ** 2  # the most pixels one decoded upload can have
# Uploads are decoded on this one thread (big raw decodes then take turns on data.decode's own),
# so freed pixels are reused from one malloc arena instead of one per pool thread.
_DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifarkit-serve-decode")
TRIM_PIXELS = 16 << 20  # after a chunk that held this many decoded pixels, freed memory goes back to the OS


def _trim_malloc() -> None:
    """Hand freed heap memory back to the OS (glibc `malloc_trim`; elsewhere nothing): without it a
    server that once decoded a few hundred MB of pixels kept them (1.01 GiB resident after four big
    requests, 0.76 GiB with it)."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


class _TooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over the {limit / 2**20:g} MiB upload limit; "
                              "send fewer or smaller images per request")


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes, by Content-Length and while streaming."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            e = _TooLarge(self.limit)
            return await JSONResponse({"detail": e.detail}, e.status_code)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:  # chunked uploads carry no Content-Length
                raise _TooLarge(self.limit)
            return msg

        await self.app(scope, limited, send)


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_allowed(host_header: str, allowed: set[str]) -> bool:
    """True when a request's Host header names this server as a page on it may: an IP address
    (a DNS-rebinding page cannot send one that is not the server's own), localhost, or a name the
    user allowed with --allow-host. Any other name (e.g. evil.example rebound to 127.0.0.1) is not."""
    import ipaddress

    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in allowed or host.rstrip(".") in allowed


class HostCheck:
    """ASGI middleware: 400 for a Host header that is not this server's (DNS rebinding, `host_allowed`)."""

    def __init__(self, app: Any, allowed: set[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.allowed):
                shown = host[:100].encode("ascii", "backslashreplace").decode()
                detail = (f"Host {shown!r} is not this server's name; open it as localhost or 127.0.0.1, or start "
                          "it with --allow-host NAME")
                return await JSONResponse({"detail": detail}, 400)(scope, receive, send)
        await self.app(scope, receive, send)


class _Named(io.BytesIO):
    """Upload bytes that print as their (made-safe) file name in decode errors."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:  # Pillow names the file with %r
        return repr(self.name)


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """(H, W, 3) uint8, decoded exactly like a file `cifarkit predict` reads: reduced while decoding
    to at most DECODE_MAX_SIDE px a side, so a request holds at most max_files of those (and a
    Grad-CAM overlay is at most that size).

    Raises:
        DataError: the upload is not an image cifarkit decodes. Whatever a decoder plugin raises on
            bytes a client sent is that too (a 400 naming the file), never a 500 with a traceback."""
    try:
        return load_rgb(_Named(data, name), max_side=DECODE_MAX_SIDE)
    except CifarkitError:
        raise
    except Exception as e:  # noqa: BLE001 - hostile bytes reach third-party decoders; the client gets a 400
        raise DataError(f"{name}: not a readable image ({type(e).__name__})") from None


def model_info(clf: Classifier, path: Path) -> dict[str, Any]:
    """What the page shows about the model: name, classes, preprocessing, and its top-1 [%] with
    where that comes from: `test_top1` is measured on split `test_split` ("val" when the run held
    out data.val_fraction > 0 of train) for checkpoint `top1_checkpoint` (this file, from its own
    evaluation in the run's log; else "best.pt", whose top-1 every checkpoint records)."""
    info: dict[str, Any] = {"file": path.name, "model": None, "classes": clf.classes, "preprocess": clf.prep.as_dict(),
                            "tta": clf.tta, "precision": clf.precision, "logit_adjust": clf.logit_adjust,
                            "device": str(clf.device),
                            "epoch": clf.meta.get("epoch"), "test_top1": None, "test_split": None,
                            "top1_checkpoint": None, "cam": clf.model is not None, "cam_methods": list(METHODS)}
    if clf.config is None:  # an exported .onnx file: the model name is in its metadata
        info["model"] = clf.meta.get("model") or None
        return info
    info["model"] = clf.config.model.name
    log = path.parent / "log.jsonl"  # the checkpoint's own run: its evaluation at this epoch
    fd = open_regular(str(log))  # a symlink, FIFO or device is ignored like a missing log
    records: list[dict[str, Any]] = []
    if fd is not None:
        try:
            records = read_log_lines(fd, log)[0]  # bounded: its header and last records
        finally:
            os.close(fd)
    header = next((r for r in records if r.get("type") == "header"), {})
    at_epoch = [r for r in records if r.get("type") == "val" and r.get("epoch") == info["epoch"]
                and isinstance(r.get("top1"), (int, float))]
    split = None
    if at_epoch:
        own = at_epoch[-1]
        info["test_top1"], info["top1_checkpoint"], split = pct(own["top1"]), path.name, own.get("split")
    else:
        best = clf.meta.get("best_top1")
        if isinstance(best, (int, float)) and best >= 0:
            info["test_top1"], info["top1_checkpoint"] = pct(best), "best.pt"
    if info["test_top1"] is not None:
        info["test_split"] = eval_split(config_to_dict(clf.config), split, header.get("eval_split"))
    return info


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).splitlines())


async def _uploads(request: Request, limits: Limits) -> list[tuple[str, UploadFile]]:
    """(safe file name, file) of every file in a multipart body, within the limits; the bytes are
    read only when the file is decoded (`_decoded`), inside the pixel budget."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the images as multipart/form-data file fields (curl -F files=@cat.png)")
    try:
        form = await request.form(max_files=limits.max_files, max_fields=limits.max_files + 16)
    except StarletteHTTPException as e:
        if e.status_code == 413:  # BodyLimit, while the form streamed in
            raise
        if "Too many files" in str(e.detail):
            raise HTTPException(413, f"at most {limits.max_files} files per request; send the rest in another "
                                     "request") from None
        raise HTTPException(400, f"the multipart body could not be read ({e.detail})") from None
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise HTTPException(400, "the request holds no image file; send one or more as multipart field 'files'")
    return [(safe_component(f.filename or "upload")[:200], f) for f in files]


async def _decoded(uploads: list[tuple[str, UploadFile]], chw: bool) -> list[tuple[str, Any]]:
    """(name, image) of each upload, decoded on a worker thread: (3, H, W) uint8 tensors for the
    model when `chw`, else (H, W, 3) uint8 arrays. DataError (a 400) names the first file that is
    not an image."""
    def decode_all() -> list[tuple[str, Any]]:
        out = []
        for name, f in uploads:
            f.file.seek(0)
            arr = decode_upload(f.file.read(), name)
            out.append((name, to_uint8_chw(arr) if chw else arr))
        return out

    return await asyncio.get_running_loop().run_in_executor(_DECODER, decode_all)


def _pixels(images: list[tuple[str, Any]]) -> int:
    """Decoded pixels of (name, image) pairs, tensors (3, H, W) or arrays (H, W, 3)."""
    return sum(int(np.prod(im.shape[-2:] if isinstance(im, torch.Tensor) else im.shape[:2])) for _, im in images)


def cam_png(clf: Classifier, image: np.ndarray, target: str | None, method: str) -> tuple[bytes, dict[str, Any]]:
    """Grad-CAM overlay as PNG bytes, and what it shows (run on the model's thread)."""
    from PIL import Image

    res = compute_cam(clf, image, target or None, method)  # leaves the model as it found it
    buf = io.BytesIO()
    Image.fromarray(overlay(image, res.heatmap)).save(buf, format="PNG")
    return buf.getvalue(), {"target": res.target_label, "target_id": res.target, "score": res.score,
                            "predicted": clf.classes[res.predicted], "layer": res.layer, "method": res.method}


def create_app(model: str | Path, runs: str | Path | None = None, *, device: str = DEVICE_DEFAULT,
               tta: str | None = None, limits: Limits | None = None, precision: str | None = None,
               allow_hosts: tuple[str, ...] = ()) -> FastAPI:
    """The FastAPI app for a checkpoint or .onnx `model` (and the runs under `runs`).

    Args:
        model: checkpoint (.pt) or exported model (.onnx), loaded once through `cifarkit.predict.load`.
        runs: folder whose run directories the runs view lists; None hides the view.
        device: auto | cpu | cuda[:N]; tta: default TTA (None: the model's own).
        precision: auto (None: what this machine is fast at) | fp32 | bf16 | fp16.
        allow_hosts: host names besides localhost and IP addresses that requests may name in their
            Host header (the names this server is reached by); any other is refused with 400.
        limits: request and batching bounds.

    Raises:
        CifarkitError: the model file cannot be used.
    """
    limits = check_limits(limits or Limits())
    runs_folder = RunsFolder(runs) if runs else None  # before the model: a wrong --runs fails at once
    clf = load(model, device=device, tta=tta, precision=precision)
    info = model_info(clf, Path(model))
    info["limits"] = asdict(limits)
    info["runs"] = runs_folder is not None
    batcher = Batcher(clf, limits.max_batch, limits.wait_ms, limits.max_queue)
    budget = PixelBudget(limits.pixel_budget)
    per_chunk = max(1, budget.total // IMAGE_PIXELS)  # images a request decodes before running them

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()
        if runs_folder is not None:
            runs_folder.close()

    # no /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN, and the app loads
    # nothing from outside; the schema itself is at /openapi.json
    app = FastAPI(title="cifarkit serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Predictions and Grad-CAM for one cifarkit model; the records are those of "
                              "`cifarkit predict --json`.")
    app.add_middleware(BodyLimit, limit=int(limits.max_upload_mb * 2**20))
    app.add_middleware(HostCheck, allowed={*LOCAL_HOSTS, *(h.strip().lower().rstrip(".") for h in allow_hosts)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(e.detail)}, e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
        return JSONResponse({"detail": f"{where}: {err.get('msg', 'invalid value')}"}, 422)

    @app.exception_handler(CifarkitError)
    async def user_error(request: Request, e: CifarkitError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(e)}, 400)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, e: ClientDisconnect) -> Response:
        return Response(status_code=400)  # the client left before sending its body: nobody to tell

    @app.exception_handler(Overloaded)
    async def busy(request: Request, e: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, 503, headers={"Retry-After": "1"})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        """Alive, with the batcher's counters (`largest_batch` > 1 means requests were merged)."""
        return {"status": "ok", "queued": batcher.queue.qsize(), **asdict(batcher.stats)}

    @app.get("/api/model")
    async def model_() -> dict[str, Any]:
        """Model name, classes, preprocessing, default TTA and precision, top-1 [%] (with its checkpoint and
        split), limits."""
        return info

    @app.post("/api/predict", openapi_extra=UPLOAD_DOC)
    async def predict(request: Request, topk: int = Query(5, ge=1, le=1000), tta: TTA | None = None,
                      batch: bool = Query(True, description="false: a forward pass for this request alone")
                      ) -> list[dict[str, Any]]:
        """Top-k for each uploaded image: the records of `cifarkit predict --json`, in upload order."""
        check_topk(topk)
        uploads = await _uploads(request, limits)
        records = []
        for start in range(0, len(uploads), per_chunk):  # within the pixel budget, a chunk at a time
            part = uploads[start:start + per_chunk]
            async with budget.hold(len(part) * IMAGE_PIXELS) as held:  # the worst case, until decoded
                images = await _decoded(part, chw=True)
                held.shrink(_pixels(images))
                tensors = [t for _, t in images]
                logits = await (batcher.logits(tensors, tta) if batch else batcher.logits_alone(tensors, tta))
                big = held.pixels >= TRIM_PIXELS
                del images, tensors
            if big:
                await asyncio.get_running_loop().run_in_executor(_DECODER, _trim_malloc)
            records += clf.records(logits, topk, [n for n, _ in part], tta)
        return [r.as_dict() for r in records]

    @app.post("/api/cam", openapi_extra=UPLOAD_DOC, response_class=Response,
              responses={200: {"content": {"image/png": {}}}})
    async def cam(request: Request, target: str | None = Query(None, description="class name or id (default: "
                                                                                  "the predicted class)"),
                  method: Literal[tuple(METHODS)] = "gradcam") -> Response:  # type: ignore[valid-type]
        """Grad-CAM overlay (PNG, the image's own size) for one image; `X-Cam` holds what it shows."""
        if clf.model is None:
            raise HTTPException(400, f"{info['file']}: Grad-CAM needs the PyTorch checkpoint; an .onnx file has "
                                     "no gradients")
        uploads = await _uploads(request, limits)
        if len(uploads) != 1:
            raise HTTPException(400, f"send exactly one image to /api/cam, not {len(uploads)}")
        async with budget.hold(IMAGE_PIXELS) as held:
            images = await _decoded(uploads, chw=False)
            held.shrink(_pixels(images))
            png, shown = await batcher.run_exclusive(cam_png, clf, images[0][1], target, method)
        return Response(png, media_type="image/png", headers={"X-Cam": json.dumps(shown)})  # json: ASCII-safe

    @app.get("/api/runs")
    async def runs_list() -> list[dict[str, Any]]:
        """Run directories under --runs: id (folder), name (config), model, best top-1 and its split, date,
        running, has a report."""
        folder = _runs_folder()

        def summaries() -> list[dict[str, Any]]:
            return [run_summary(folder, r) for r in folder.scan().values()]

        return await asyncio.to_thread(summaries)

    @app.get("/api/runs/{run_id:path}/curves")
    async def curves(run_id: str) -> dict[str, Any]:
        """A run's train and val records, for its curves (poll it while the run trains); `partial`: the
        log is longer than what is read of it, so the curves show its last part."""
        return await asyncio.to_thread(lambda: run_curves(_runs_folder(), _run(run_id)))

    @app.get("/runs/{run_id:path}/report.html", include_in_schema=False)
    async def report(run_id: str) -> StreamingResponse:
        # opened once, by descriptor, no symlink on the way; streamed from that descriptor
        fd = await asyncio.to_thread(lambda: _runs_folder().open(_run(run_id), "report.html"))
        if fd is None:  # missing, or a symlink / FIFO / anything but a regular file
            raise HTTPException(404, f"run {run_id[:200]!r} has no report.html; make one with `cifarkit report`")
        return StreamingResponse(stream_fd(fd), media_type="text/html", headers={"Cache-Control": "no-store"})

    def _runs_folder() -> RunsFolder:
        if runs_folder is None:
            raise HTTPException(404, "no runs folder: start the server with --runs DIR")
        return runs_folder

    def _run(run_id: str):
        run = _runs_folder().scan().get(run_id)  # the scan's own table: a client id is never a path
        if run is None:
            raise HTTPException(404, f"no run {run_id[:200]!r} under the runs folder")
        return run

    return app


def serve(model: str | Path, runs: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          device: str = DEVICE_DEFAULT, tta: str | None = None, limits: Limits | None = None,
          precision: str | None = None, allow_hosts: tuple[str, ...] = ()) -> None:
    """Run the app until SIGINT/SIGTERM. Binds the socket first, so `port=0` picks a free port."""
    try:
        import uvicorn
    except ImportError:
        raise CifarkitError("cifarkit serve needs FastAPI and uvicorn: pip install 'cifarkit[serve]'") from None
    check_port(port)
    app = create_app(model, runs, device=device, tta=tta, limits=limits, precision=precision,
                     allow_hosts=allow_hosts)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CifarkitError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); choose another "
                            "port") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    local = host in ("127.0.0.1", "localhost", "::1")
    print(f"serving {model} at http://{shown}:{bound}/ (API schema at /openapi.json); "
          + ("bound to this machine only (--host 0.0.0.0 to share it)" if local else
             f"reachable from other machines on {host}") + "; Ctrl+C stops it", flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: a stop is not an error
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("cifarkit serve: stopped", flush=True)
