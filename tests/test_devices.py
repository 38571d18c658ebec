"""Process-level settings (audiogen.devices)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocate and free N tensors of 64 MB one after another, as a codec's layers do over a long window, and
# count the minor page faults (each a 4 kB page the kernel maps and zero-fills).
_FAULTS = """
import resource, sys, torch
from audiogen.devices import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
x = torch.ones(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(int(sys.argv[2])):
    y = x * 2.0  # a new 64 MB tensor; the last one is freed by this assignment
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_instead_of_mapped_again():
    def faults(mode: str, n: int) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode, str(n)], capture_output=True, text=True, check=True)
        took, count = out.stdout.split()
        assert took == ("True" if mode == "keep" else "None")
        return int(count)

    pages = (64 << 20) // 4096  # of one tensor
    # the premise: by default every one of the 60 tensors is mapped and faulted in anew
    assert faults("default", 60) > 50 * pages
    # kept: the first few are faulted in (measured: 4 to 7 tensors' worth, with 10 made or 60), then their
    # memory is reused, however many follow
    assert faults("keep", 60) < 12 * pages
