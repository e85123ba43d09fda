#!/usr/bin/env python3
"""What the commits in a SQLite WAL wrote: wal-frames.py WAL PAGES

WAL is a copy of a database's -wal file; PAGES the output of
`sqlite3 DB "SELECT name, pageno FROM dbstat"` for that database (which B-tree owns
each page). Prints the commits found (frames of the WAL header's salt, up to the last
commit frame) and their frames per commit, by B-tree.
"""
import collections
import struct
import sys

owner = {}
for line in open(sys.argv[2]):
    name, page = line.rstrip("\n").rsplit("|", 1)
    owner[int(page)] = name
wal = open(sys.argv[1], "rb").read()
page_size = struct.unpack(">I", wal[8:12])[0]
salt = struct.unpack(">2I", wal[16:24])
commits, current, offset = [], [], 32
while offset + 24 + page_size <= len(wal):
    page, size_after, s1, s2 = struct.unpack(">4I", wal[offset:offset + 16])
    if (s1, s2) != salt:
        break
    current.append(page)
    if size_after:  # a commit frame
        commits.append(current)
        current = []
    offset += 24 + page_size
if not commits:
    sys.exit("no commit in this WAL")
by_tree = collections.Counter(owner.get(p, "(new page)") for c in commits for p in c)
print(f"{len(commits)} commits, {sum(map(len, commits)) / len(commits):.1f} frames per commit:")
for name, n in by_tree.most_common():
    print(f"  {n / len(commits):6.2f}  {name}")
