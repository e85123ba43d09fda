#!/usr/bin/env bash
# Regenerate the fixtures of crates/phone/tests/fixtures from Python `phonenumbers`:
#
# - corpus.jsonl: the exactness corpus, from the release whose metadata the Rust port
#   bundles (requirements-metadata.txt);
# - mappers.jsonl: the carrier and time-zone sample, from the release whose data
#   crates/phone/data holds (requirements-data.txt), restricted to numbers on which both
#   releases agree on validity, type and region;
# - corpus.version: the metadata release of the corpus, checked by the test.
#
# Bumping the port (rlibphonenumber) means pinning the matching release in
# requirements-metadata.txt and running this script; refreshing the carrier and
# time-zone data (refresh-data.sh) means pinning requirements-data.txt to it.
#
# Needs python3 with venv and access to PyPI. Virtual environments go to $VENV_DIR
# (default: a fresh temporary directory).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
crate="$here/../../crates/phone"
fixtures="$crate/tests/fixtures"
venvs=${VENV_DIR:-$(mktemp -d)}

venv() {
  local name=$1 requirements=$2
  if [ ! -x "$venvs/$name/bin/python" ]; then
    python3 -m venv "$venvs/$name"
    "$venvs/$name/bin/pip" install --quiet -r "$requirements"
  fi
  echo "$venvs/$name/bin/python"
}

metadata_py=$(venv metadata "$here/requirements-metadata.txt")
data_py=$(venv data "$here/requirements-data.txt")

data_version=$(cat "$crate/data/VERSION")
pinned_data=$(sed -n 's/^phonenumbers==/v/p' "$here/requirements-data.txt")
if [ "$data_version" != "$pinned_data" ]; then
  echo "crates/phone/data is $data_version but requirements-data.txt pins $pinned_data" >&2
  exit 1
fi

mkdir -p "$fixtures"
cd "$here"
"$metadata_py" corpus.py "$fixtures/corpus.jsonl" "$crate/data"
"$metadata_py" -c 'import phonenumbers; print("v" + phonenumbers.__version__)' > "$fixtures/corpus.version"
"$data_py" mappers.py "$fixtures/corpus.jsonl" "$fixtures/mappers.jsonl"
