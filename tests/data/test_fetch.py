"""`fetch` against a real HTTP server on 127.0.0.1: md5, resume with Range, restart, no half files."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from cifarkit.data.fetch import fetch
from cifarkit.errors import DataError

PAYLOAD = bytes(range(256)) * 2000  # 512,000 bytes
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    ranges = True  # honour Range requests
    cut_after: int | None = None  # close the connection after this many body bytes
    seen_ranges: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path != "/cifar-10-python.tar.gz":
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        type(self).seen_ranges.append(rng)
        if rng and self.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            self.wfile.write(body[: self.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    Handler.ranges, Handler.cut_after, Handler.seen_ranges = True, None, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_md5(server, tmp_path: Path):
    path = fetch("cifar10", tmp_path, base_url=server, md5=MD5, quiet=True)
    assert path.name == "cifar-10-python.tar.gz" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "cifar-10-python.tar.gz.part").exists()
    # second call: already there and verified, no download
    assert fetch("cifar10", tmp_path, base_url=server, md5=MD5, quiet=True) == path
    assert len(Handler.seen_ranges) == 1


def test_wrong_md5_leaves_no_file(server, tmp_path: Path):
    with pytest.raises(DataError, match="md5"):
        fetch("cifar10", tmp_path, base_url=server, quiet=True)  # the official md5 cannot match
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()
    assert not (tmp_path / "cifar-10-python.tar.gz.part").exists()


def test_interrupted_then_resumed_with_range(server, tmp_path: Path):
    Handler.cut_after = 100_000
    with pytest.raises(DataError, match="interrupted"):
        fetch("cifar10", tmp_path, base_url=server, md5=MD5, quiet=True)
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()
    part = tmp_path / "cifar-10-python.tar.gz.part"
    assert part.stat().st_size == 100_000
    Handler.cut_after = None
    path = fetch("cifar10", tmp_path, base_url=server, md5=MD5, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert Handler.seen_ranges[-1] == "bytes=100000-"


def test_resume_from_existing_part(server, tmp_path: Path):
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(PAYLOAD[:1234])
    path = fetch("cifar10", tmp_path, base_url=server, md5=MD5, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert Handler.seen_ranges == ["bytes=1234-"]


def test_restart_when_server_ignores_range(server, tmp_path: Path):
    Handler.ranges = False
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(b"garbage" * 100)
    path = fetch("cifar10", tmp_path, base_url=server, md5=MD5, quiet=True)
    assert path.read_bytes() == PAYLOAD  # a 200 reply restarts from zero instead of appending


def test_unreachable_server_is_one_clear_error(tmp_path: Path):
    with pytest.raises(DataError, match="cannot connect"):
        fetch("cifar10", tmp_path, base_url="http://127.0.0.1:9/", quiet=True, timeout=5)


def test_http_error_and_unknown_name(server, tmp_path: Path):
    with pytest.raises(DataError, match="HTTP 404"):
        fetch("cifar10", tmp_path, base_url=server + "missing/", md5=MD5, quiet=True)
    with pytest.raises(DataError, match="unknown dataset"):
        fetch("mnist", tmp_path)


def test_fetch_cli_end_to_end(server, tmp_path: Path):
    from test_cli_data import run

    r = run("data", "fetch", "cifar10", "--root", str(tmp_path), "--url", server)
    # the served bytes are not the official archive: the md5 check must catch it, leave nothing
    assert r.returncode == 2 and r.stderr.startswith("error:") and "md5" in r.stderr
    assert list(tmp_path.iterdir()) == []
    r = run("data", "fetch", "cifar10", "--root", str(tmp_path), "--url", "http://127.0.0.1:9/")
    assert r.returncode == 2 and "cannot connect" in r.stderr
