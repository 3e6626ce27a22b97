"""engine/memory.py: the CPU allocator hold that keeps large training buffers in the process.

The allocator is measured in a fresh interpreter: in pytest's long-lived process earlier tests
leave free blocks in the heap that a new allocation may reuse, which hides what is measured."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from cifarkit.config import load_config

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt is glibc's")
MIB = 1 << 20

PROBE = """
import json, os, resource, torch
from cifarkit.engine.memory import hold_freed_memory

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def kept_after_free(mib=256):  # bytes still resident after allocating, touching and freeing a block
    before = rss()
    torch.empty(mib << 20, dtype=torch.uint8).fill_(1)
    return rss() - before

def faults_of_second_alloc(mib=64):  # minor faults of a block the size of one just freed
    torch.empty(mib << 20, dtype=torch.uint8).fill_(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(mib << 20, dtype=torch.uint8).fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"default_kept": kept_after_free(), "default_faults": faults_of_second_alloc()}
release = hold_freed_memory()
out["held_kept"] = kept_after_free()
out["held_faults"] = min(faults_of_second_alloc() for _ in range(3))
resident = rss()
release()
out["released"] = resident - rss()
print(json.dumps(out))
"""


def probe(env: dict[str, str]) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"} | env
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@glibc
def test_freed_blocks_stay_resident_are_reused_without_faults_and_are_given_back():
    m = probe({})
    assert m["default_kept"] < 32 * MIB  # glibc's default: a 256 MiB block is unmapped on free...
    assert m["default_faults"] > 8000  # ...and a new 64 MiB block faults in its 16,384 pages again
    assert m["held_kept"] > 200 * MIB and m["held_faults"] < 1000
    assert m["released"] > 200 * MIB  # release() hands the held memory back


@glibc
def test_a_users_own_malloc_settings_are_left_alone():
    m = probe({"MALLOC_ARENA_MAX": "2"})
    assert m["held_kept"] < 32 * MIB and m["held_faults"] > 8000


@pytest.mark.parametrize("hold", [True, False])
def test_fit_holds_memory_for_the_run_only_and_when_asked(cifar10_small, tmp_path, monkeypatch, hold):
    import cifarkit.engine.train as train

    calls = []
    monkeypatch.setattr(train, "hold_freed_memory", lambda: calls.append("hold") or (lambda: calls.append("release")))
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "cifar10_fast.yaml",
                      [f"data.root={cifar10_small}", "train.batch_size=100", "train.max_iters=2", "log.plots=false",
                       "eval.tta=none", "train.device=cpu", f"train.hold_memory={hold}"])
    train.fit(cfg, work_dir=tmp_path / "run", quiet=True)
    assert calls == (["hold", "release"] if hold else [])


def test_compile_cuda_leaves_a_cpu_run_eager(cifar10_small, tmp_path, monkeypatch):
    import torch

    import cifarkit.engine.train as train

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(kw) or m)
    base = [f"data.root={cifar10_small}", "train.batch_size=100", "train.max_iters=1", "log.plots=false",
            "eval.tta=none", "train.device=cpu"]
    fast = Path(__file__).resolve().parents[2] / "configs" / "cifar10_fast.yaml"
    train.fit(load_config(fast, [*base, "train.compile=cuda"]), work_dir=tmp_path / "a", quiet=True)
    assert compiled == []
    train.fit(load_config(fast, [*base, "train.compile=true", "train.compile_mode=max-autotune"]),
              work_dir=tmp_path / "b", quiet=True)
    assert compiled == [{"mode": "max-autotune"}]
