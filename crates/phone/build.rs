//! Compiles libphonenumber's carrier (English) and time-zone prefix files in `data/` into
//! compact sorted tables: one `u64` key per prefix (its digits shifted left by five bits,
//! plus its length), a parallel `u16` index into a table of distinct values, and the
//! values themselves. The runtime looks a number up by binary search, longest prefix
//! first. No large `match`, so the crate compiles quickly.

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Value index meaning "this prefix has no English carrier name".
const NO_NAME: u16 = u16::MAX;

fn main() {
    let data = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("data");
    println!("cargo:rerun-if-changed=data");
    println!("cargo:rerun-if-changed=build.rs");

    let version = fs::read_to_string(data.join("VERSION")).expect("data/VERSION");
    let mut out = String::new();
    writeln!(
        out,
        "/// libphonenumber release the carrier and time-zone data come from.\n\
         pub const DATA_VERSION: &str = {:?};",
        version.trim()
    )
    .unwrap();

    // Carrier: English names, plus prefixes that only other languages name.
    let mut carrier: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut files: Vec<PathBuf> = fs::read_dir(data.join("carrier/en"))
        .expect("data/carrier/en")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    for file in &files {
        for (prefix, name) in entries(file) {
            carrier.insert(prefix, Some(name));
        }
    }
    for line in lines(&data.join("carrier/prefixes-without-en.txt")) {
        carrier.entry(line).or_insert(None);
    }
    let mut names: Vec<String> = carrier.values().flatten().cloned().collect();
    names.sort();
    names.dedup();
    assert!(names.len() < usize::from(NO_NAME), "too many carrier names");
    let rows = carrier.into_iter().map(|(prefix, name)| {
        let value = match name {
            Some(name) => names.binary_search(&name).unwrap() as u16,
            None => NO_NAME,
        };
        (prefix, value)
    });
    emit_table(&mut out, "CARRIER", rows.collect());
    writeln!(
        out,
        "static CARRIER_NAMES: [&str; {}] = {:?};",
        names.len(),
        names
    )
    .unwrap();

    // Time zones: each prefix maps to a list of zones separated by '&'.
    let mut zones: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (prefix, list) in entries(&data.join("timezones/map_data.txt")) {
        zones.insert(prefix, list.split('&').map(str::to_owned).collect());
    }
    let mut sets: Vec<Vec<String>> = zones.values().cloned().collect();
    sets.sort();
    sets.dedup();
    let rows = zones
        .into_iter()
        .map(|(prefix, set)| (prefix, sets.binary_search(&set).unwrap() as u16));
    emit_table(&mut out, "TIME_ZONE", rows.collect());
    write!(out, "static TIME_ZONE_SETS: [&[&str]; {}] = [", sets.len()).unwrap();
    for set in &sets {
        write!(out, "&{set:?},").unwrap();
    }
    out.push_str("];\n");

    let dest = PathBuf::from(env::var("OUT_DIR").unwrap()).join("prefix_tables.rs");
    fs::write(dest, out).unwrap();
}

/// Writes `{NAME}_KEYS`, `{NAME}_VALUES` and `{NAME}_MAX_LEN`, keys sorted.
fn emit_table(out: &mut String, name: &str, rows: Vec<(String, u16)>) {
    let mut keyed: Vec<(u64, u16)> = rows.iter().map(|(p, v)| (key(p), *v)).collect();
    keyed.sort_unstable();
    for pair in keyed.windows(2) {
        assert_ne!(pair[0].0, pair[1].0, "duplicate prefix in {name}");
    }
    let max_len = rows.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    writeln!(out, "const {name}_MAX_LEN: usize = {max_len};").unwrap();
    write!(out, "static {name}_KEYS: [u64; {}] = [", keyed.len()).unwrap();
    for (k, _) in &keyed {
        write!(out, "{k},").unwrap();
    }
    out.push_str("];\n");
    write!(out, "static {name}_VALUES: [u16; {}] = [", keyed.len()).unwrap();
    for (_, v) in &keyed {
        write!(out, "{v},").unwrap();
    }
    out.push_str("];\n");
}

/// The key of a digit prefix; `src/prefix.rs` computes the same.
fn key(prefix: &str) -> u64 {
    assert!(
        !prefix.is_empty() && prefix.len() <= 18 && prefix.bytes().all(|b| b.is_ascii_digit()),
        "bad prefix {prefix:?}"
    );
    (prefix.parse::<u64>().unwrap() << 5) | prefix.len() as u64
}

/// Non-comment, non-empty lines, trimmed.
fn lines(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// `prefix|value` lines.
fn entries(path: &Path) -> Vec<(String, String)> {
    lines(path)
        .into_iter()
        .map(|l| {
            let (prefix, value) = l
                .split_once('|')
                .unwrap_or_else(|| panic!("{}: bad line {l:?}", path.display()));
            (prefix.to_owned(), value.to_owned())
        })
        .collect()
}
