"""core.memory.release_free_memory gives a fragmented heap's free pages back (issue 14: hospital RSS)."""

import subprocess
import sys

import pytest

CHILD = """
import ctypes, ctypes.util
from core.memory import release_free_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(64 * 1024) for _ in range(4000)]  # 250 MB of heap (below the mmap threshold)
for block in blocks:
    ctypes.memset(block, 1, 64 * 1024)
for index, block in enumerate(blocks):
    if index % 100:  # keep every 100th: the heap cannot shrink from its top, only be given back inside
        libc.free(block)
before = rss_mb()
release_free_memory()
print(before, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim; elsewhere a no-op")
def test_free_pages_inside_a_fragmented_heap_are_given_back():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
    before, after = map(float, out.split())
    assert before - after > 150, (before, after)  # about 245 of the 250 MB were free
