"""Untrusted input, round three: memory bounded across images (per command and per request, not
only per image), only regular files opened, and the commonest mistakes (a file that is not an
image, an empty list, an empty array) as one clear error instead of a traceback or a hang.

The huge inputs are built at test time: a 7999 x 7999 PNG of zeros is ~190 KB on disk and 64 Mpx
decoded. Peak memory is the process's own high-water mark (VmHWM) of a fresh
`cifarkit` process.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cifarkit
from cifarkit.data.decode import DECODE_MAX_SIDE, load_rgb
from cifarkit.errors import DataError
from conftest import make_checkpoint

HUGE = 7999
GIB = 2**30
# the process before it reads any image (torch + model) peaks at 0.71 GiB here; with nine 7999^2
# PNGs 1.04-1.15 GiB alone and up to 1.70 GiB inside the full suite (malloc arenas; the cause of the
# spread is not pinned down). The issue measured 12.1 GB for eight before. docs/safety.md promises 2 GiB.
PREDICT_PEAK_LIMIT = 2.0 * GIB


def zeros_png(path: Path, mode: str = "L", size: int = HUGE) -> Path:
    """A size x size PNG of zeros, written row by row (never held decoded): ~190 KB for 8-bit."""
    depth, colour, bpp = {"L": (8, 0, 1), "I;16": (16, 0, 2), "RGB": (8, 2, 3)}[mode]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + size * bpp)  # filter byte 0 + the row's zero bytes
    body = b"".join(comp.compress(row) for _ in range(size)) + comp.flush()
    ihdr = size.to_bytes(4, "big") * 2 + bytes([depth, colour, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


# The peak is VmHWM, the high-water mark of this process's own address space. Not ru_maxrss: Linux
# carries the old address space's high-water mark into ru_maxrss at exec, and subprocess starts the
# child with vfork, so the child reported the pytest worker's peak (1.70 GB in one full-suite run).
PEAK_WRAPPER = ("import sys\n"
                "from cifarkit.cli import main\n"
                "try:\n    code = main(sys.argv[1:])\n"
                "finally:\n"
                "    hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')]\n"
                "    print(f'PEAK_KB {hwm[0]}', file=sys.stderr)\n"
                "sys.exit(code)\n")


def run_measured(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """`cifarkit ARGS` in a fresh process; (result, its peak RSS in bytes)."""
    r = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *args], capture_output=True, text=True, timeout=timeout)
    peak = [int(x.split()[1]) for x in r.stderr.splitlines() if x.startswith("PEAK_KB ")]
    assert peak, r.stderr[-2000:]
    return r, peak[-1] * 1024.0


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_checkpoint("airnet", tmp_path_factory.mktemp("bounded") / "model.pt")


@pytest.mark.slow
def test_huge_images_are_reduced_while_decoding(tmp_path: Path):
    """A 7999^2 PNG (8-bit and 16-bit grey) and a 4000 x 3000 JPEG come back at most
    DECODE_MAX_SIDE a side, with their content (a box-filtered grey stays that grey)."""
    arr = load_rgb(zeros_png(tmp_path / "z.png"), max_side=DECODE_MAX_SIDE)
    assert arr.dtype == np.uint8 and max(arr.shape[:2]) <= DECODE_MAX_SIDE and arr.shape[2] == 3 and arr.max() == 0
    arr16 = load_rgb(zeros_png(tmp_path / "z16.png", "I;16"), max_side=DECODE_MAX_SIDE)
    assert max(arr16.shape[:2]) <= DECODE_MAX_SIDE and arr16.max() == 0
    Image.new("RGB", (4000, 3000), (200, 100, 50)).save(tmp_path / "big.jpg", quality=95)
    j = load_rgb(tmp_path / "big.jpg", max_side=DECODE_MAX_SIDE)
    assert j.shape == (750, 1000, 3) and abs(int(j[300, 400, 0]) - 200) <= 3  # DCT-scaled: 1/4
    small = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "s.png")
    assert np.array_equal(load_rgb(tmp_path / "s.png", max_side=DECODE_MAX_SIDE), small)  # small: untouched
    # the same image as a path, a PIL image and an array gives the same prediction input
    big = np.random.default_rng(1).integers(0, 256, (2100, 1500, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "b.png")
    from cifarkit.predict import to_uint8_chw

    a, b, c = (to_uint8_chw(x) for x in (tmp_path / "b.png", Image.fromarray(big), big))
    assert a.shape == (3, 700, 500) and torch_equal(a, b) and torch_equal(a, c)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


@pytest.mark.slow
def test_predict_folder_of_huge_pngs_has_bounded_peak_memory(model: Path, tmp_path: Path):
    """8 zero PNGs of 7999^2 (1.5 MB on disk in all; the issue measured a 12.1 GB peak) and one
    16-bit one: all predicted, and the whole command's peak RSS stays under the documented bound."""
    folder = tmp_path / "huge"
    folder.mkdir()
    for i in range(8):
        zeros_png(folder / f"z{i}.png")
    zeros_png(folder / "grey16.png", "I;16")
    r, peak = run_measured("predict", str(model), str(folder), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.splitlines()) == 9
    print(f"predict, 9 huge PNGs: peak RSS {peak / GIB:.2f} GiB")
    assert peak < PREDICT_PEAK_LIMIT, f"peak RSS {peak / GIB:.2f} GiB"


@pytest.mark.slow
def test_serve_request_of_huge_pngs_has_bounded_peak_memory_and_cam_size(model: Path, tmp_path: Path):
    pytest.importorskip("fastapi")
    import httpx

    from cifarkit.serve.launch import running_server

    png = zeros_png(tmp_path / "z.png").read_bytes()
    with running_server(str(model)) as srv:
        def hwm() -> float:
            status = Path(f"/proc/{srv.proc.pid}/status").read_text()
            return int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1]) * 1024.0

        before = hwm()
        r = httpx.post(srv.url + "/api/predict", files=[("files", (f"z{i}.png", png)) for i in range(3)], timeout=300)
        assert r.status_code == 200 and len(r.json()) == 3
        r = httpx.post(srv.url + "/api/cam", files=[("files", ("z.png", png))], timeout=300)
        assert r.status_code == 200
        shown = Image.open(io.BytesIO(r.content))
        assert max(shown.size) <= DECODE_MAX_SIDE  # the overlay returned is bounded too
        after = hwm()
    print(f"serve: VmHWM {before / GIB:.2f} -> {after / GIB:.2f} GiB for 3 + 1 huge PNGs")
    # measured +0.53 GiB here (AVX2 EPYC); was +4.3 GB for three in one request and 7.3 GB for one CAM
    assert after - before < 0.8 * GIB


@pytest.mark.slow
def test_not_an_image_is_one_error_line_not_a_traceback(model: Path, tmp_path: Path):
    """notes.jpg that is text, /dev/zero and a FIFO: one `error:` line each, exit 1, no hang (a
    FIFO is never opened), the good image still predicted."""
    (tmp_path / "notes.jpg").write_text("shopping list\n")
    os.mkfifo(tmp_path / "pipe.png")
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "good.png")
    for only in (["notes.jpg"], ["notes.jpg", "pipe.png", "/dev/zero", "good.png"]):
        args = [str(tmp_path / f) if not f.startswith("/") else f for f in only]
        r = subprocess.run([sys.executable, "-m", "cifarkit", "predict", str(model), *args, "--json"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == len(only) - ("good.png" in only) + 1  # one per bad file + the summary line
        assert len(r.stdout.splitlines()) == ("good.png" in only)
    for kind in ("FIFO", "device", "not a readable image"):
        assert any(kind in x for x in errors), (kind, errors)


def test_library_predict_refuses_empty_and_malformed_inputs(model: Path, tmp_path: Path):
    clf = cifarkit.load(model)
    bad = [[], np.zeros((0, 0, 3), np.uint8), np.zeros(5, np.uint8), np.zeros((4, 4, 4), np.uint8),
           np.zeros((4, 4, 3), np.float32), Image.new("RGB", (0, 0)), 42]
    for x in bad:
        with pytest.raises(DataError):
            clf.predict(x)
    (tmp_path / "notes.jpg").write_text("not an image")
    (res,) = list(clf.predict_files([tmp_path / "notes.jpg"]))
    assert res[1] is None and "not a readable image" in res[2]
    assert clf.predict(np.zeros((4, 4), np.uint8)).label in clf.classes  # 2-D grey is fine


def test_manifest_row_naming_a_fifo_is_listed_unreadable(tmp_path: Path):
    """A manifest row whose path is a FIFO (or a folder) is one unreadable entry, never opened."""
    from cifarkit.data.folder import check_files, read_manifest

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    (tmp_path / "c.png").mkdir()
    (tmp_path / "m.csv").write_text("path,label\na.png,cat\nb.png,dog\nc.png,dog\n")
    report = check_files(read_manifest(tmp_path / "m.csv"))
    reasons = dict(report.unreadable)
    assert report.images == 1 and set(map(lambda x: Path(x).name, reasons)) == {"b.png", "c.png"}
    assert any("FIFO" in e for e in reasons.values()) and any("folder" in e for e in reasons.values())


def grey_png(path: Path, value: int, size: int = HUGE) -> Path:
    """A size x size 8-bit grey PNG of one value (zlib level 1: quick to write, ~0.3 MB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    comp = zlib.compressobj(1)
    row = b"\x00" + bytes([value]) * size
    body = b"".join(comp.compress(row) for _ in range(size)) + comp.flush()
    ihdr = size.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.mark.slow
def test_dataset_commands_on_a_folder_of_huge_pngs_have_bounded_peak_memory(tmp_path: Path):
    """Round four: 16 distinct 7999^2 PNGs in two class folders. `data stats`, `data audit` and
    `train` decode each image reduced to DECODE_MAX_SIDE (then to data.image_size) and never hold
    one at full size. Measured here (2-core Xeon, AMX): stats 0.80, audit 0.81, train 1.16 GiB;
    before, stats and audit ran out of a 9.5 GB address-space limit and train peaked at 5.70 GiB
    (the issue measured 4.16 / 4.10 / 3.91 GB with eight)."""
    data = tmp_path / "data"
    for c, base in (("a", 40), ("b", 200)):
        for i in range(8):
            grey_png(data / c / f"{i}.png", base + 3 * i)  # distinct: the audit keeps copies in one fold
    small = ["--set", "model.kwargs.widths=[32,64,64]", "--set", "model.num_classes=2", "--set", "train.epochs=1",
             "--set", "train.batch_size=4", "--set", "data.image_size=32"]
    for args in (["data", "stats", str(data)],
                 ["data", "audit", str(data), "--out", str(tmp_path / "audit"), "--folds", "2", *small],
                 ["train", "fast", "--set", f"data.root={data}", *small, "--work-dir", str(tmp_path / "run")]):
        r, peak = run_measured(*args)
        assert r.returncode == 0, r.stderr[-2000:]
        print(f"{' '.join(args[:2])}, 16 huge PNGs: peak RSS {peak / GIB:.2f} GiB")
        assert peak < PREDICT_PEAK_LIMIT, f"{args[:2]}: peak RSS {peak / GIB:.2f} GiB"
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "audit" / "audit.json").is_file()


@pytest.mark.slow
def test_predict_of_hundreds_of_huge_pngs_has_bounded_peak_memory(model: Path, tmp_path: Path):
    """240 links to one 7999^2 PNG: the issue measured 2.35-2.41 GB for 120-240 (1.83 / 1.89 GiB
    here), from the evaluation transform's float copy of a whole chunk of 1,000^2 images (800 MB);
    it now works TRANSFORM_PIXELS at a time: 1.16 GiB here."""
    one = zeros_png(tmp_path / "one.png")
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(240):
        os.link(one, folder / f"{i:03d}.png")
    r, peak = run_measured("predict", str(model), str(folder), "--json")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 240, r.stderr[-2000:]
    print(f"predict, 240 huge PNGs: peak RSS {peak / GIB:.2f} GiB")
    assert peak < PREDICT_PEAK_LIMIT, f"peak RSS {peak / GIB:.2f} GiB"
