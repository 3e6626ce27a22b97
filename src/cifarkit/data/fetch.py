"""Download the official CIFAR archives with a progress bar, resume, and md5 verification.

The bytes go to `<name>.part` and are renamed to the final name only after the md5 matches, so
a half download never sits under the real name. A `.part` left by an interrupted run is resumed
with an HTTP Range request when the server honours it, and restarted from zero when it does not.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cifarkit.errors import DataError

BASE_URL = "https://www.cs.toronto.edu/~kriz/"
ARCHIVES = {
    "cifar10": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def md5_of(path: Path, chunk: int = 1 << 20) -> str:
    """The hex MD5 of the file at `path`, read in blocks of `chunk` bytes."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch(name: str, root: str | Path = "data", base_url: str | None = None,
          md5: str | None = None, quiet: bool = False, timeout: float = 60.0) -> Path:
    """Download CIFAR-10 or CIFAR-100 ("python version") and verify its MD5.

    An interrupted download resumes from its `.part` file; an archive already in `root` with the
    right MD5 is returned without downloading.

    Args:
        name: "cifar10" or "cifar100".
        root: the folder to put the archive in.
        base_url: an http(s) mirror (default `$CIFARKIT_MIRROR`, else the official site).
        md5: the expected MD5 (default: the official archive's).
        quiet: no progress bar.
        timeout: network timeout per request [s].

    Returns:
        The verified archive's path, e.g. `data/cifar-10-python.tar.gz`.

    Raises:
        DataError: an unknown name, a bad URL, a network failure or an MD5 mismatch.
    """
    if name not in ARCHIVES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(ARCHIVES)}")
    filename, expected = ARCHIVES[name]
    expected = md5 or expected
    root = Path(root)
    mirror = base_url or os.environ.get("CIFARKIT_MIRROR") or BASE_URL
    parsed = urllib.parse.urlsplit(mirror)
    # http(s) only: urllib would also open file:// and ftp:// and fail with a traceback on "notaurl"
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise DataError(f"--url {mirror!r}: not an http:// or https:// address; give a mirror such as "
                        f"{BASE_URL}, or put {filename} in {root} yourself")
    root.mkdir(parents=True, exist_ok=True)
    final = root / filename
    if final.is_file():
        if md5_of(final) == expected:
            return final
        raise DataError(f"{final}: exists but its md5 is not {expected}; delete it and fetch again")
    url = mirror.rstrip("/") + "/" + filename
    part = final.with_name(filename + ".part")
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is already complete (or bogus): verify below
            resp = None
        else:
            raise DataError(f"{url}: HTTP {e.code} {e.reason}; check the address or try later") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: cannot connect ({getattr(e, 'reason', e)}); check your network, or "
                        f"download {filename} by hand into {root}") from None
    if resp is not None:
        with resp:
            resumed = have and resp.status == 206
            mode = "ab" if resumed else "wb"
            total = resp.length + (have if resumed else 0) if resp.length is not None else None
            from tqdm import tqdm

            with open(part, mode) as f, tqdm(total=total, initial=have if resumed else 0, unit="B",
                                             unit_scale=True, desc=filename,
                                             disable=quiet or None) as bar:
                try:
                    while block := resp.read(1 << 16):
                        f.write(block)
                        bar.update(len(block))
                except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                    raise DataError(f"{url}: download interrupted ({e}); run the same command again "
                                    f"to resume from {part}") from None
    if resp is not None and total is not None and part.stat().st_size < total:
        raise DataError(f"{url}: download interrupted at {part.stat().st_size} of {total} bytes; run the same "
                        f"command again to resume from {part}")
    got = md5_of(part)
    if got != expected:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: downloaded file has md5 {got}, expected {expected}; the partial file "
                        "was removed, run the command again")
    os.replace(part, final)
    return final
