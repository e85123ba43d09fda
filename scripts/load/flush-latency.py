#!/usr/bin/env python3
"""How long the disk takes to make a small write durable, as a commit waits for it.

    scripts/load/flush-latency.py [DIR] [SECONDS]     (defaults: ., 30)

Writes 8 KiB at a time into a scratch file in DIR (the data dir, or PostgreSQL's) and
flushes each write with fdatasync, about 150 times a second, for SECONDS; then prints
the flush latency's median, 99th percentile and maximum, and the wall-clock time of
each flush over 50 ms. Every durable commit of the service (SQLite `durability =
"full"`, PostgreSQL with `synchronous_commit` on) waits for one such flush, and every
request in flight waits for its commit: a slow flush shows up as all the connections'
requests finishing late together. Run it alone, or beside a load run to line its slow
flushes up with the slow requests.
"""
import os
import sys
import time


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    path = os.path.join(directory, f".flush-latency-{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    block = b"x" * 8192
    latencies, slow = [], []
    try:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            os.pwrite(fd, block, (i % 128) * len(block))
            i += 1
            t = time.perf_counter()
            os.fdatasync(fd)
            ms = (time.perf_counter() - t) * 1000
            latencies.append(ms)
            if ms > 50:
                slow.append(f"{time.strftime('%H:%M:%S')} {ms:.0f} ms")
            time.sleep(0.005)
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    n = len(latencies)
    print(
        f"{n} flushes in {seconds:.0f} s: median {latencies[n // 2]:.2f} ms, "
        f"p99 {latencies[int(n * 0.99)]:.2f} ms, max {latencies[-1]:.1f} ms"
    )
    print(f"over 50 ms ({len(slow)}): " + (", ".join(slow) or "none"))


if __name__ == "__main__":
    main()
