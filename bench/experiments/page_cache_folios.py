"""How the kernel holds a file in its page cache: large folios or single 4 KiB pages.

    python bench/experiments/page_cache_folios.py FILE...

Maps the first 64 MiB of each file, faults every page in, and counts the pages by
/proc/kpageflags (via /proc/self/pagemap): heads and tails of compound pages (large folios)
and single pages. Read the files first if their page cache should come from a plain read.
Run as root (page frame numbers are hidden from others).
"""

from __future__ import annotations

import mmap
import os
import struct
import sys

_SPAN = 64 << 20
_PAGE = mmap.PAGESIZE
_COMPOUND_HEAD, _COMPOUND_TAIL = 15, 16  # bits of /proc/kpageflags
_PRESENT = 1 << 63
_PFN_MASK = (1 << 55) - 1


def mapping_start(path: str) -> int:
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(path):
                return int(line.split("-", 1)[0], 16)
    raise SystemExit(f"{path}: mapping not found")


def page_flags(base: int, pages: int) -> list[int | None]:
    """kpageflags of each present page of a mapping starting at page `base`; None if absent."""
    found: list[int | None] = []
    with open("/proc/self/pagemap", "rb") as pagemap, open("/proc/kpageflags", "rb") as flags:
        for page in range(pages):
            pagemap.seek((base + page) * 8)
            (entry,) = struct.unpack("Q", pagemap.read(8))
            if not entry & _PRESENT:
                found.append(None)
                continue
            flags.seek((entry & _PFN_MASK) * 8)
            found.append(struct.unpack("Q", flags.read(8))[0])
    return found


def count_folios(path: str) -> tuple[int, int, int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        length = min(_SPAN, os.fstat(fd).st_size) // _PAGE * _PAGE
        with mmap.mmap(fd, length, prot=mmap.PROT_READ) as mapped:
            sum(mapped[offset] for offset in range(0, length, _PAGE))  # fault every page in
            base = mapping_start(os.path.realpath(path)) // _PAGE
            present = [bits for bits in page_flags(base, length // _PAGE) if bits is not None]
        heads = sum(bits >> _COMPOUND_HEAD & 1 for bits in present)
        tails = sum(bits >> _COMPOUND_TAIL & 1 for bits in present)
        return heads, tails, len(present) - heads - tails
    finally:
        os.close(fd)


def main(paths: list[str]) -> int:
    for path in paths:
        heads, tails, single = count_folios(path)
        print(f"{path}: {heads} large folios ({heads + tails} pages), {single} single pages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
