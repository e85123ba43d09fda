#!/usr/bin/env python3
"""How a thread spends its time, sampled: writer-state.py /proc/PID/task/TID SECONDS

Every 0.5 ms reads the thread's state and kernel stack from /proc (root is needed for
the stack) and prints the share of samples running or runnable, inside fsync or
fdatasync, waiting on a futex (for work), and in any other wait (by the kernel
function it waits in).
"""
import collections
import sys
import time

task, seconds = sys.argv[1], float(sys.argv[2])
seen = collections.Counter()
end = time.time() + seconds
while time.time() < end:
    state = open(f"{task}/stat").read().rsplit(") ", 1)[1].split()[0]
    try:
        stack = open(f"{task}/stack").read()
    except OSError:
        stack = ""
    if state == "R":
        kind = "running or runnable"
    elif "fsync" in stack or "fdatasync" in stack:
        kind = "in fsync/fdatasync"
    elif "futex" in stack:
        kind = "waiting for work (futex)"
    else:
        top = stack.splitlines()[0].split()[-1].split("+")[0] if stack else "?"
        kind = f"waiting ({state}) in {top}"
    seen[kind] += 1
    time.sleep(0.0005)
total = sum(seen.values())
for kind, n in seen.most_common(6):
    print(f"  {100 * n / total:5.1f} %  {kind}")
