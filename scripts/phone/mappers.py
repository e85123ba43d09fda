"""Generate the carrier and time-zone reference sample for crates/phone.

Run with the `phonenumbers` release whose carrier and time-zone data crates/phone ships
(crates/phone/data/VERSION; see requirements-data.txt); generate-fixtures.sh does that.

The parser's metadata (v9.0.42, bundled by the port) is newer than the shipped data, and
the mappers' answers depend on the number type. So the sample keeps only numbers on which
both releases agree on validity, type and region: there the reference answers are exactly
what ringfence must answer. Numbers without a carrier and with time zone "Etc/Unknown"
are all alike; only a seeded sample of them is kept. Reads the corpus written by corpus.py, writes JSON lines:

  {"e164": "+447911123456", "carrier": "Vodafone" | absent, "time_zones": [...]}
"""

import json
import random
import sys

import phonenumbers
from phonenumbers import carrier, timezone

from corpus import TYPES


rng = random.Random(20261125)


def main():
    corpus_path, out_path = sys.argv[1], sys.argv[2]
    seen = set()
    kept = dropped = 0
    with open(corpus_path, encoding="utf-8") as f, open(out_path, "w", encoding="utf-8") as out:
        for line in f:
            row = json.loads(line)
            e164 = row.get("e164")
            if e164 is None or e164 in seen:
                continue
            seen.add(e164)
            num = phonenumbers.parse(e164, None)
            same = (
                phonenumbers.is_valid_number(num) == row["valid"]
                and TYPES[phonenumbers.number_type(num)] == row["type"]
                and phonenumbers.region_code_for_number(num) == row.get("region")
            )
            if not same:
                dropped += 1
                continue
            answer = {"e164": e164}
            name = carrier.name_for_number(num, "en")
            if name:
                answer["carrier"] = name
            answer["time_zones"] = list(timezone.time_zones_for_number(num))
            if not name and answer["time_zones"] == ["Etc/Unknown"] and rng.random() > 0.05:
                continue
            kept += 1
            out.write(json.dumps(answer, ensure_ascii=False, separators=(",", ":")) + "\n")
    print("%s: %d numbers, %d left out where releases disagree (phonenumbers %s)"
          % (out_path, kept, dropped, phonenumbers.__version__))


if __name__ == "__main__":
    main()
