"""Memory measurement shared by the benchmarks: each job in a fresh, capped process.

Standard library only, so the benchmarks that run in other virtual environments (TransformerLens's)
can import it too. Peak RSS is the kernel's VmHWM, reset once the model is loaded, so it is the
whole process during the measured call: weights, activations and whatever the call keeps.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GIB = 2**30


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM) since start or the last :func:`reset_peak_rss`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def cap_address_space(cap_gib: float) -> None:
    """Make allocations past ``cap_gib`` of address space fail (an out-of-memory under a cap)."""
    cap = int(cap_gib * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def measured(result: dict[str, Any], run: Callable[[], object]) -> dict[str, Any]:
    """Call ``run`` once, the peak reset just before; add to ``result`` whether it worked (the
    allocator refusing under the cap is an outcome, not a crash), its seconds and the peak."""
    result["load_peak_bytes"] = peak_rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    try:
        run()
        result["ok"] = True
    except (RuntimeError, MemoryError) as error:
        result["ok"] = False
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    result["seconds"] = time.perf_counter() - start
    result["peak_bytes"] = peak_rss_bytes()
    return result


def run_child(script: str, kind: str, length: int, cap_gib: float) -> dict[str, Any]:
    """Run ``script --child kind --tokens length --cap-gib cap_gib`` in a fresh interpreter and
    return the JSON line it prints last (or a failed result naming its exit)."""
    command = [sys.executable, script, "--child", kind, "--tokens", str(length), "--cap-gib", str(cap_gib)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"kind": kind, "tokens": length, "ok": False, "error": f"exit {done.returncode}: {last[:160]}"}
    return json.loads(lines[-1])
