"""Generate the exactness corpus for crates/phone from Python `phonenumbers`.

Run with the `phonenumbers` release whose metadata the Rust port bundles (see
requirements-metadata.txt); generate-fixtures.sh does that. Writes JSON lines (a key that would be null is left out):

  {"input": "...", "default_region": "GB" | null,
   "e164": "+44..." | null, "valid": bool, "type": "mobile" | null,
   "region": "GB" | "001" | null, "possible": "is_possible" | null,
   "error": "too_short_nsn" | null}

Every case is derived from libphonenumber's own metadata (example numbers of every
region and type) or drawn from a seeded random generator, so the file is reproducible.
"""

import json
import os
import random
import re
import string
import sys

import phonenumbers
from phonenumbers import (
    NumberParseException,
    PhoneMetadata,
    PhoneNumberFormat,
    PhoneNumberType,
    ValidationResult,
)

SEED = 20261125

TYPES = {
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
    PhoneNumberType.UNKNOWN: "unknown",
}
POSSIBLE = {
    ValidationResult.IS_POSSIBLE: "is_possible",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "is_possible_local_only",
    ValidationResult.INVALID_COUNTRY_CODE: "invalid_country_code",
    ValidationResult.TOO_SHORT: "too_short",
    ValidationResult.INVALID_LENGTH: "invalid_length",
    ValidationResult.TOO_LONG: "too_long",
}
ERRORS = {
    NumberParseException.INVALID_COUNTRY_CODE: "invalid_country_code",
    NumberParseException.NOT_A_NUMBER: "not_a_number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too_short_after_idd",
    NumberParseException.TOO_SHORT_NSN: "too_short_nsn",
    NumberParseException.TOO_LONG: "too_long",
}
DESC_TYPES = [t for t in TYPES if t not in (PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.UNKNOWN)]
DESC_FIELDS = {
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
}

rng = random.Random(SEED)
REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
NON_GEO = sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)
REAL_CCS = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
UNREAL_CCS = [cc for cc in range(0, 1000) if cc not in phonenumbers.COUNTRY_CODE_TO_REGION_CODE]


def answer(text, region):
    row = {"input": text, "default_region": region}
    try:
        num = phonenumbers.parse(text, region)
    except NumberParseException as e:
        row.update(e164=None, valid=False, type=None, region=None, possible=None,
                   error=ERRORS[e.error_type])
        return row
    row.update(
        e164=phonenumbers.format_number(num, PhoneNumberFormat.E164),
        valid=phonenumbers.is_valid_number(num),
        type=TYPES[phonenumbers.number_type(num)],
        region=phonenumbers.region_code_for_number(num),
        possible=POSSIBLE[phonenumbers.is_possible_number_with_reason(num)],
        error=None,
    )
    return row


def idd_for(region):
    """A dialable international prefix of the region, if it has a plain one."""
    meta = PhoneMetadata.metadata_for_region(region)
    if meta.preferred_international_prefix and re.fullmatch(r"\d+", meta.preferred_international_prefix):
        return meta.preferred_international_prefix
    if meta.international_prefix and re.fullmatch(r"\d+", meta.international_prefix):
        return meta.international_prefix
    return None


FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
PUNCT = ["-", ".", " ", "/", "(", ")", "\u2013", "\u00a0"]


def mutate_digit(nsn):
    i = rng.randrange(len(nsn))
    d = rng.choice([c for c in "0123456789" if c != nsn[i]])
    return nsn[:i] + d + nsn[i + 1:]


def punctuate(digits):
    out = []
    for i, c in enumerate(digits):
        if i and rng.random() < 0.3:
            out.append(rng.choice(PUNCT))
        out.append(c)
    return "".join(out)


def variants(num, home):
    """Spellings of one example number (valid, and mutated into invalid ones)."""
    cc = num.country_code
    nsn = phonenumbers.national_significant_number(num)
    e164 = phonenumbers.format_number(num, PhoneNumberFormat.E164)
    intl = phonenumbers.format_number(num, PhoneNumberFormat.INTERNATIONAL)
    national = phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)
    rfc = phonenumbers.format_number(num, PhoneNumberFormat.RFC3966)
    other = rng.choice(REGIONS)
    out = [
        (e164, None),
        (intl, None),
        (rfc, None),
        (intl, other),
        ("+" + str(cc) + mutate_digit(nsn), None),
        ("+" + str(cc) + nsn + rng.choice(string.digits), None),
        ("+" + str(cc) + nsn[:-1], None),
        ("+" + punctuate(str(cc) + nsn), None),
        (intl + rng.choice([" ext. ", " x", ";ext=", " #", " доб. "]) + str(rng.randrange(1, 99999)), None),
        (rng.choice([e164.translate(FULLWIDTH), e164.translate(ARABIC_INDIC),
                     e164.replace("+", "\uff0b")]), None),
    ]
    if home is not None:
        out += [
            (national, home),
            (national, other),
            (rng.choice([punctuate(nsn), nsn]), rng.choice([home, other])),
            ("tel:" + national.replace(" ", "-") + ";phone-context=+" + str(cc), None),
            ("tel:" + nsn + ";phone-context=example.com", home),
        ]
        idd = idd_for(home)
        if idd:
            out.append((idd + " " + str(cc) + " " + nsn, home))
        caller = rng.choice(REGIONS)
        idd = idd_for(caller)
        if idd:
            out.append((idd + str(cc) + nsn, caller))
            out.append((idd + str(cc) + nsn[: rng.randrange(0, 3)], caller))
    return out


def example_cases():
    for region in REGIONS:
        for t in DESC_TYPES:
            num = phonenumbers.example_number_for_type(region, t)
            if num is not None:
                yield from variants(num, region)
    for cc in NON_GEO:
        meta = PhoneMetadata.metadata_for_nongeo_region(cc)
        for t, field in DESC_FIELDS.items():
            desc = getattr(meta, field)
            if desc is not None and desc.example_number:
                num = phonenumbers.parse("+" + str(cc) + desc.example_number, None)
                yield from variants(num, None)


def random_digits(lo, hi):
    return "".join(rng.choice(string.digits) for _ in range(rng.randint(lo, hi)))


def random_cases():
    for _ in range(2000):
        yield ("+" + str(rng.choice(REAL_CCS)) + random_digits(1, 18), None)
    for _ in range(800):
        yield ("+" + str(rng.choice(UNREAL_CCS)) + random_digits(0, 15), None)
    for _ in range(1000):
        yield (random_digits(1, 18), rng.choice(REGIONS))
    for _ in range(300):
        yield (random_digits(1, 18), None)


def garbage_cases():
    fixed = [
        "", " ", "+", "++", "++44 20 7946 0958", "+-", "tel:", "tel:+", "tel:;phone-context=+44",
        "tel:020;phone-context=", "tel:020;phone-context=+", "tel:020;phone-context=.",
        "tel:12345;phone-context=+1-", "tel:7946 0958;phone-context=+44-20",
        "1-800-FLOWERS", "+1 800 FLOWERS", "0800 REVERSE", "abc", "ext. 1234", "x123",
        "+44 (0) 20 7946 0958", "+44 (0)7911 123456", "(020) 7946-0958", "+1 (202) 555-0173",
        "00 44 20 7946 0958", "011 44 20 7946 0958", "0044", "011", "+0", "+00", "+000 12345",
        "+1", "+12", "+44", "+4420", "+1 202 555 0173 555 0173 555 0173", "+" + "9" * 20,
        "+" + "1" * 250, "1" * 251, "+44 7911 123456" + " " * 240, "+44" + "-" * 300 + "7911123456",
        "\u200e+44 7911 123456", "+44\u20287911123456", "#+44 7911 123456", "*100#", "911", "112",
        "+80012345678", "+800 1234 5678", "+979 123 456 789", "+882 345 678 90",
        "\u0660\u0661\u0662", "\u096a\u096b", "+\u0664\u0664 \u0667\u0669\u0661\u0661",
        "+44 7911 123456 ;ext=12", "+44 7911 123456#", "+44 7911 123456x", "+44 7911 123456 ext",
        "+1 (650) 253-0000 x 123", "tel:+1-650-253-0000;isub=12345", "tel:+44-7911-123456;ext=9;x=y",
        "tel:+44-7911-123456;isub=1;phone-context=+44", "sip:+447911123456@example.com",
        "+44 7911 123456\n", "\t+44 7911 123456\t", "+ 4 4 7 9 1 1 1 2 3 4 5 6",
        "++447911123456", "+44++7911123456", "++++", "----", "..", "()", "+()",
        # Two digits and an extension: not a number for libphonenumber.
        "25#8", "25 #8", "25 ext 8", "25 ext. 8", "25;ext=8", "25x8", "25 x 8", "25~8", "00#1",
        "tel:25#8;phone-context=example.com", "tel:25#8;phone-context=+44", "25#8;isub=1",
        "ab 25#8 !!", "25#", "255#8", "2#8", "٢٥#٨", "２５#８", "25/x8", "25,,8",
    ]
    for text in fixed:
        yield (text, None)
        yield (text, rng.choice(REGIONS))
    alphabet = string.digits * 4 + string.ascii_letters + "+-. ()/#*;=,x\u00a0\uff10\uff11\u0661ä€"
    for _ in range(600):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        yield (text, rng.choice([None, rng.choice(REGIONS)]))


def data_prefix_cases(data_dir):
    """Numbers inside carrier and time-zone prefixes, so the mappers meet real ranges."""
    prefixes = set()
    for sub in ("carrier/en",):
        folder = os.path.join(data_dir, sub)
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        prefixes.add(line.split("|", 1)[0])
    carrier = sorted(prefixes)
    with open(os.path.join(data_dir, "carrier/prefixes-without-en.txt"), encoding="utf-8") as f:
        shadowing = sorted(l.strip() for l in f if l.strip() and not l.startswith("#"))
    with open(os.path.join(data_dir, "timezones/map_data.txt"), encoding="utf-8") as f:
        zones = sorted({l.split("|", 1)[0] for l in f if l.strip() and not l.startswith("#")})
    picked = (rng.sample(carrier, min(3000, len(carrier))) + rng.sample(zones, min(1500, len(zones)))
              + shadowing * 3)
    for prefix in picked:
        found = None
        for _ in range(12):
            candidate = "+" + prefix + random_digits(max(0, 9 - len(prefix)), max(0, 13 - len(prefix)))
            try:
                if phonenumbers.is_valid_number(phonenumbers.parse(candidate, None)):
                    found = candidate
                    break
            except NumberParseException:
                pass
        yield (found or candidate, None)


def main():
    out_path, data_dir = sys.argv[1], sys.argv[2]
    seen = set()
    rows = []
    for case in (list(example_cases()) + list(random_cases()) + list(garbage_cases())
                 + list(data_prefix_cases(data_dir))):
        if case in seen:
            continue
        seen.add(case)
        rows.append(answer(*case))
    with open(out_path, "w", encoding="utf-8") as f:
        for row in rows:
            # Absent keys are null: it keeps the committed file small.
            row = {k: v for k, v in row.items() if v is not None}
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    print("%s: %d cases (phonenumbers %s)" % (out_path, len(rows), phonenumbers.__version__))


if __name__ == "__main__":
    main()
