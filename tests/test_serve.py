"""`cifarkit serve` through a real server process on a free loopback port.

The API must give the records `cifarkit predict --json` prints for the same files, whatever the
requests were batched with; hostile input is a 4xx JSON sentence and never takes the server
down; the runs view serves only what it found under --runs, and follows a run that is training.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cifarkit.cli import main as cli_main
from cifarkit.serve.launch import running_server
from conftest import make_checkpoint, make_images

pytest.importorskip("fastapi")
N_IMAGES = 12


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def cli_predict(capsys, model: Path, files: list[Path], *args: str) -> dict[str, dict]:
    """`cifarkit predict --json` records by file name."""
    capsys.readouterr()
    assert cli_main(["predict", str(model), *map(str, files), "--json", *args]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {Path(r.pop("path")).name: r for r in recs}


def same_record(got: dict, want: dict) -> bool:
    """Equal prediction records: labels, ids, order and settings exactly; scores to 1e-6. A batch
    of other size runs other CPU kernels, which can move a bf16 softmax score in the 8th decimal
    (seen once in CI: 0.10067747 vs 0.10067748 for a third-ranked class)."""
    got, want = {k: v for k, v in got.items() if k != "path"}, {k: v for k, v in want.items() if k != "path"}
    strip = lambda r: {**r, "score": None, "topk": [{**t, "score": None} for t in r["topk"]]}  # noqa: E731
    scores = lambda r: [r["score"], *(t["score"] for t in r["topk"])]  # noqa: E731
    return strip(got) == strip(want) and scores(got) == pytest.approx(scores(want), abs=1e-6)


def write_log(run: Path, records: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "log.jsonl", "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


HEADER = {"type": "header", "config": {"model": {"name": "airnet"}}, "classes": ["a", "b"]}


F32_TOP1 = float(np.float32(61.2))  # 61.20000076293945: a top-1 as a float32 metric leaves it


def train_rec(it: int) -> dict:
    return {"type": "train", "epoch": 1 + it // 10, "iter": it, "lr": 0.1, "loss": 2.0 / (1 + it)}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, model, image folder, runs folder) shared by this module's tests."""
    tmp = tmp_path_factory.mktemp("serve")
    model = make_checkpoint("airnet", tmp / "model.pt")
    # the model's own run log: its evaluation at its epoch (0), a float32 top-1
    write_log(tmp, [HEADER, {"type": "val", "epoch": 0, "iter": 0, "top1": F32_TOP1, "split": "test"}])
    images = tmp / "images"
    images.mkdir()
    for i, arr in enumerate(make_images(np.arange(N_IMAGES) % 10, seed=3)):
        (images / f"img{i:02d}.png").write_bytes(png_bytes(arr))
    runs = tmp / "runs"
    write_log(runs / "done", [HEADER, train_rec(0), {"type": "val", "epoch": 1, "iter": 10, "top1": 41.5,
                                                     "top5": 90.0, "loss": 1.2},
                              {"type": "summary", "best_top1": 41.5}])
    (runs / "done" / "report.html").write_text("<html><body><h1>the report</h1></body></html>")
    write_log(runs / "group" / "training", [HEADER, train_rec(0), train_rec(1)])
    outside = tmp / "outside"
    write_log(outside, [HEADER, train_rec(0)])
    (outside / "report.html").write_text("secret")
    (runs / "escape").symlink_to(outside)
    # a real run directory whose report.html is a symlink to a file outside the runs folder
    write_log(runs / "linked", [HEADER, train_rec(0)])
    (runs / "linked" / "report.html").symlink_to(outside / "report.html")
    # a report.html that is a FIFO: never opened (it would block the server for ever)
    write_log(runs / "fifo", [HEADER, train_rec(0)])
    os.mkfifo(runs / "fifo" / "report.html")
    # `cifarkit demo`'s layout: the folder is "run", the config's name "demo"; float32 top-1s, a val split
    demo_header = {**HEADER, "config": {"name": "demo", "model": {"name": "airnet"}, "data": {"val_fraction": 0.1}}}
    write_log(runs / "run", [demo_header, train_rec(0), {"type": "val", "epoch": 1, "iter": 10, "top1": F32_TOP1,
                                                         "top5": float(np.float32(97.3)), "loss": 1.0},
                             {"type": "summary", "best_top1": F32_TOP1}])
    with running_server(str(model), "--runs", str(runs), "--max-files", "16", "--max-upload-mb", "2",
                        "--allow-host", "cifar.lab.example") as srv:
        yield srv, model, images, runs


def post(url: str, files: list[tuple[str, bytes]], client: httpx.Client | None = None, **params) -> httpx.Response:
    c = client or httpx
    return c.post(url, files=[("files", f) for f in files], params=params, timeout=60)


def test_predict_matches_cli_records_and_tta(served, capsys):
    srv, model, images, _ = served
    files = sorted(images.glob("*.png"))
    for tta in ("none", "flip"):
        want = cli_predict(capsys, model, files, "--tta", tta, "--topk", "3")
        r = post(srv.url + "/api/predict", [(f.name, f.read_bytes()) for f in files], topk=3, tta=tta)
        assert r.status_code == 200, r.text
        got = r.json()
        assert [g["path"] for g in got] == [f.name for f in files]  # upload order, the client's names
        for g in got:
            assert {k: v for k, v in g.items() if k != "path"} == want[g["path"]]  # exact scores too
            assert g["tta"] == tta


@pytest.mark.slow
def test_concurrent_requests_are_batched_without_changing_results(served, capsys):
    """The short load test: 200 single-image requests from 16 clients, all answered, all equal
    to `cifarkit predict`, merged into batches of mixed company, and equal to the unbatched path."""
    srv, model, images, _ = served
    files = sorted(images.glob("*.png"))
    want = cli_predict(capsys, model, files)
    before = httpx.get(srv.url + "/api/health").json()

    def one(i: int) -> tuple[str, httpx.Response]:
        f = files[i % len(files)]
        with httpx.Client() as c:
            return f.name, post(srv.url + "/api/predict", [(f.name, f.read_bytes())], c)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    assert [r.status_code for _, r in results] == [200] * 200
    for name, r in results:
        (rec,) = r.json()
        assert rec["path"] == name and same_record(rec, want[name])
    after = httpx.get(srv.url + "/api/health").json()
    assert after["requests"] - before["requests"] == 200
    assert after["batches"] - before["batches"] < 200 and after["largest_batch"] > 1  # really merged
    alone = post(srv.url + "/api/predict", [(files[0].name, files[0].read_bytes())], batch="false").json()[0]
    assert same_record(alone, want[files[0].name])


def bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header claiming side x side pixels: a few bytes that would decode to ~30 GB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def test_bad_input_is_one_4xx_sentence_and_the_server_lives(served):
    srv, _, images, _ = served
    good = (images / "img00.png").read_bytes()
    url = srv.url + "/api/predict"
    cases = {
        "not an image": lambda: post(url, [("notes.txt", b"hello, not an image")]),
        "truncated": lambda: post(url, [("cut.png", good[: len(good) // 2])]),
        "bomb": lambda: post(url, [("bomb.png", bomb_png())]),
        "too large": lambda: httpx.post(url, files=[("files", ("big.png", b"\0" * (3 << 20)))], timeout=60),
        "too many files": lambda: post(url, [(f"{i}.png", good) for i in range(1000)]),
        "malformed multipart": lambda: httpx.post(url, content=b"--x\r\ngarbage\r\n", timeout=60,
                                                  headers={"content-type": "multipart/form-data; boundary=x"}),
        "no multipart": lambda: httpx.post(url, json={"path": "/etc/passwd"}),
        "no file": lambda: httpx.post(url, data={"topk": "3"}, files=[("other", (None, "x"))]),
        "bad topk": lambda: post(url, [("a.png", good)], topk=0),
        "unknown class": lambda: post(srv.url + "/api/cam", [("a.png", good)], target="zebra"),
        "two images to cam": lambda: post(srv.url + "/api/cam", [("a.png", good), ("b.png", good)]),
    }
    for what, send in cases.items():
        r = send()
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and 10 < len(detail) < 400 and "\n" not in detail, (what, detail)
        assert post(url, [("ok.png", good)]).status_code == 200, f"the server did not survive: {what}"
    assert "zebra" in post(srv.url + "/api/cam", [("a.png", good)], target="zebra").json()["detail"]
    assert "bomb" in post(url, [("bomb.png", bomb_png())]).json()["detail"]


def test_cam_png_and_model_info(served):
    srv, _, images, _ = served
    good = (images / "img01.png").read_bytes()
    r = post(srv.url + "/api/cam", [("a.png", good)], target="dog")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    assert json.loads(r.headers["x-cam"])["target"] == "dog"
    info = httpx.get(srv.url + "/api/model").json()
    assert info["model"] == "airnet" and info["classes"][5] == "dog" and info["preprocess"]["input_size"] == 32
    assert info["limits"]["max_files"] == 16 and info["cam"] and info["runs"]
    assert "/api/predict" in httpx.get(srv.url + "/openapi.json").json()["paths"]
    for page in ("/docs", "/redoc"):  # FastAPI's pages load their scripts from a CDN: left out
        assert httpx.get(srv.url + page).status_code == 404
    page = httpx.get(srv.url + "/").text
    assert "<script>" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing remote
    assert "bound to this machine only" in srv.output[0]


def test_runs_view_serves_only_runs_found_under_the_folder(served):
    srv, _, _, runs = served
    listed = {r["id"]: r for r in httpx.get(srv.url + "/api/runs").json()}
    # the symlink leading outside is not a run
    assert set(listed) == {"done", "group/training", "linked", "fifo", "run"}
    assert listed["done"]["best_top1"] == 41.5 and listed["done"]["model"] == "airnet"
    assert listed["done"]["report"] and not listed["done"]["running"] and listed["group/training"]["running"]
    assert httpx.get(srv.url + "/runs/done/report.html").text.startswith("<html><body><h1>the report")
    for bad in ("escape", "..", "../outside", "%2e%2e/outside", "/etc", "group", "linked", "fifo"):
        r = httpx.get(f"{srv.url}/runs/{bad}/report.html")
        assert r.status_code == 404 and "secret" not in r.text, bad
    # live: records appended to a training run's log show up in the next poll
    curves = httpx.get(srv.url + "/api/runs/group/training/curves").json()
    assert len(curves["train"]) == 2 and curves["running"]
    write_log(runs / "group" / "training", [train_rec(2), {"type": "val", "epoch": 1, "iter": 2, "top1": 12.0}])
    curves = httpx.get(srv.url + "/api/runs/group/training/curves").json()
    assert len(curves["train"]) == 3 and curves["val"][0]["top1"] == 12.0


@pytest.mark.slow
def test_sigint_and_sigterm_stop_it_cleanly(tmp_path: Path):
    import signal

    model = make_checkpoint("airnet", tmp_path / "m.pt")
    for sig in (signal.SIGTERM, signal.SIGINT):
        with running_server(str(model)) as srv:
            srv.proc.send_signal(sig)
            assert srv.proc.wait(30) == 0
            srv.reader.join(10)
            assert srv.output[-1] == "cifarkit serve: stopped"


def test_files_served_only_from_inside_the_runs_folder(served):
    """A report.html that is a symlink to a file outside --runs (say the password file) is a 404,
    like one that is missing; so is a FIFO (never opened: it would block)."""
    srv, _, _, runs = served
    assert (runs / "linked" / "report.html").read_text() == "secret"  # the link itself works on disk
    listed = {r["id"]: r for r in httpx.get(srv.url + "/api/runs").json()}
    for rid in ("linked", "fifo"):
        r = httpx.get(f"{srv.url}/runs/{rid}/report.html", timeout=10)
        assert r.status_code == 404 and "secret" not in r.text, rid
        assert listed[rid]["report"] is False  # listed as a run, with no report to open


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io",
                                  "", "cifar.lab.example.evil"])
def test_a_foreign_host_header_is_refused(served, host):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends
    `Host: evil.example`; the server answers nothing but a 400 to it."""
    srv = served[0]
    for path in ("/api/runs", "/api/model", "/runs/done/report.html", "/"):
        r = httpx.get(srv.url + path, headers={"Host": host})
        assert r.status_code == 400 and "Host" in r.json()["detail"] and "secret" not in r.text, (host, path)
        assert "41.5" not in r.text and "airnet" not in r.text


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "[::1]:8000", "cifar.lab.example",
                                  "10.1.2.3:80"])
def test_local_names_ip_addresses_and_allowed_hosts_are_served(served, host):
    srv = served[0]
    r = httpx.get(srv.url + "/api/runs", headers={"Host": host})
    assert r.status_code == 200 and {x["id"] for x in r.json()} >= {"done"}


def test_a_client_that_leaves_mid_body_gets_no_traceback_on_the_server(served):
    srv = served[0]
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
                     b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n1234")
    assert httpx.get(srv.url + "/api/health").json()["status"] == "ok"  # and it still answers
    time.sleep(0.5)  # let the server notice the closed connection
    assert not [line for line in srv.output if "Traceback" in line or "ClientDisconnect" in line], srv.output[-20:]


def test_accuracies_leave_the_api_rounded_as_the_page_shows_them(served):
    """A float32 top-1 (61.20000076293945) is 61.2 in every answer that carries an accuracy."""
    srv = served[0]
    info = httpx.get(srv.url + "/api/model")
    assert info.json()["test_top1"] == 61.2 and "61.2000" not in info.text
    runs = httpx.get(srv.url + "/api/runs")
    assert {r["id"]: r for r in runs.json()}["run"]["best_top1"] == 61.2 and "61.2000" not in runs.text
    curves = httpx.get(srv.url + "/api/runs/run/curves")
    assert curves.json()["val"][0]["top1"] == 61.2 and curves.json()["val"][0]["top5"] == 97.3
    assert "61.2000" not in curves.text and "97.30000" not in curves.text


def test_a_run_is_named_by_its_config_and_identified_by_its_folder(served):
    srv = served[0]
    listed = {r["id"]: r for r in httpx.get(srv.url + "/api/runs").json()}
    assert listed["run"]["name"] == "demo"  # config name, not the folder's
    assert listed["done"]["name"] == "done"  # no name in the config: the folder
    assert httpx.get(srv.url + "/api/runs/run/curves").status_code == 200  # the id stays the folder
    assert httpx.get(srv.url + "/api/runs/demo/curves").status_code == 404


def test_the_top1_names_its_checkpoint_and_split(served, tmp_path: Path):
    """The served file's own evaluation in its run's log names that file and the logged split; without
    one the number is the run's best (best.pt's), on "val" when the config held out data.val_fraction."""
    from cifarkit.predict import load
    from cifarkit.serve.app import model_info

    srv = served[0]
    info = httpx.get(srv.url + "/api/model").json()
    assert (info["top1_checkpoint"], info["test_split"], info["test_top1"]) == ("model.pt", "test", 61.2)
    listed = {r["id"]: r for r in httpx.get(srv.url + "/api/runs").json()}
    assert listed["run"]["split"] == "val" and listed["done"]["split"] == "test"

    import torch

    ck = torch.load(make_checkpoint("airnet", tmp_path / "last.pt"), weights_only=False)
    ck["best_top1"], ck["epoch"] = F32_TOP1, 3
    ck["config"]["data"]["val_fraction"] = 0.2
    torch.save(ck, tmp_path / "last.pt")
    info = model_info(load(tmp_path / "last.pt", device="cpu"), tmp_path / "last.pt")
    assert (info["top1_checkpoint"], info["test_split"], info["test_top1"]) == ("best.pt", "val", 61.2)
