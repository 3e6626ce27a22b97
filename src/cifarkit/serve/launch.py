"""Start `cifarkit serve` as a child process on a free loopback port (tests, benchmarks).

The child dies with its parent (PR_SET_PDEATHSIG on Linux) and is always stopped with SIGINT,
then SIGKILL if it does not exit; the server prints its address once the socket is bound.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from cifarkit.data.export import die_with_parent


@dataclass
class Server:
    """A `cifarkit serve` child process started by `launch`, with its URL and everything it printed."""
    url: str
    proc: subprocess.Popen
    output: list[str] = field(default_factory=list)  # every line the server printed
    reader: threading.Thread | None = None  # fills `output`; ends when the server's stdout closes


@contextlib.contextmanager
def running_server(model: str, *args: str, timeout: float = 120.0) -> Iterator[Server]:
    """`cifarkit serve MODEL --host 127.0.0.1 --port 0 ARGS...`, ready (health answered) inside."""
    cmd = [sys.executable, "-m", "cifarkit", "serve", str(model), "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            preexec_fn=functools.partial(die_with_parent, os.getpid()))
    server = Server("", proc)
    ready = threading.Event()

    def pump() -> None:  # keep the pipe drained for the server's whole life
        for line in proc.stdout:
            server.output.append(line.rstrip("\n"))
            m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if m and not server.url:
                server.url = f"http://127.0.0.1:{m[1]}"
                ready.set()
        ready.set()

    server.reader = threading.Thread(target=pump, daemon=True)
    server.reader.start()
    try:
        ready.wait(timeout)
        if not server.url:
            raise RuntimeError("cifarkit serve did not start:\n" + "\n".join(server.output[-20:]))
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(server.url + "/api/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("cifarkit serve never answered:\n" + "\n".join(server.output[-20:])) from None
                time.sleep(0.1)
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace: float = 15.0) -> int:
    """SIGINT (what Ctrl+C sends), then SIGKILL after `grace` seconds; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
