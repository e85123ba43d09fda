"""Write a user-base CSV for benchmarking `ringfence phone check --csv`.

  python3 scripts/phone/make-bench-csv.py [ROWS] [OUT]     (default 1000000, /tmp/users-1m.csv)

Columns: id, email, phone, created_at. The phone column mixes, with a fixed seed:
international numbers of every region and type from the fixture corpus (valid and not),
UK numbers in national format (read with --region GB), the same numbers spelled again
with other punctuation (duplicates the summary must find), and garbage. Needs only the
Python standard library and crates/phone/tests/fixtures/corpus.jsonl.
"""

import csv
import json
import os
import random
import sys

here = os.path.dirname(os.path.abspath(__file__))
corpus = os.path.join(here, "..", "..", "crates", "phone", "tests", "fixtures", "corpus.jsonl")


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    out = sys.argv[2] if len(sys.argv) > 2 else "/tmp/users-1m.csv"
    rng = random.Random(20261125)
    with open(corpus, encoding="utf-8") as f:
        pool = [r["input"] for r in map(json.loads, f)
                if "default_region" not in r and "\n" not in r["input"] and len(r["input"]) < 60]
    earlier = []
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "email", "phone", "created_at"])
        for i in range(rows):
            roll = rng.random()
            if roll < 0.55:
                phone = rng.choice(pool)
            elif roll < 0.80:
                d = "7" + "".join(rng.choice("0123456789") for _ in range(9))
                phone = rng.choice(["0%s %s" % (d[:4], d[4:]), "0" + d, "+44 %s %s" % (d[:4], d[4:]),
                                    "(0%s) %s-%s" % (d[:4], d[4:7], d[7:])])
            elif roll < 0.95 and earlier:
                phone = rng.choice(earlier)
                phone = rng.choice([phone.replace(" ", ""), phone.replace(" ", "-"), " " + phone + " "])
            else:
                phone = "".join(rng.choice("0123456789abc+-() ") for _ in range(rng.randint(0, 16)))
            if len(earlier) < 50_000 and rng.random() < 0.1:
                earlier.append(phone)
            w.writerow([i + 1, "user%d@example.com" % (i + 1), phone,
                        "2026-%02d-%02dT%02d:%02d:00Z" % (rng.randint(1, 11), rng.randint(1, 28),
                                                         rng.randint(0, 23), rng.randint(0, 59))])
    print("%s: %d rows" % (out, rows))


if __name__ == "__main__":
    main()
