//! `ringfence phone …`: the phone-number layer as a command-line tool.
//!
//! `check` answers, for each number given as an argument or on a line of stdin, exactly
//! one output line (text or JSON) with what libphonenumber says about it; with `--csv`
//! it normalises a column of an existing user base on every core and ends with a summary
//! that counts, among other things, the rows that collapse onto one E.164 number. The
//! output is deterministic and in input order.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ringfence_phone::{
    check, DefaultRegion, NumberType, ParseErrorKind, PhoneError, Possibility, E164,
};
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum PhoneCommand {
    /// Check numbers given as arguments, on stdin, or in a CSV column.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Region for numbers written in national format (two letters, e.g. GB).
    #[arg(long, value_name = "XX")]
    region: Option<String>,
    /// One JSON object per line (and a JSON summary with --csv).
    #[arg(long)]
    json: bool,
    /// Normalise a column of this CSV file (with a header row) instead.
    #[arg(long, value_name = "IN", requires_all = ["column", "out"], conflicts_with = "numbers")]
    csv: Option<PathBuf>,
    /// The column of --csv that holds the phone numbers.
    #[arg(long, value_name = "NAME", requires = "csv")]
    column: Option<String>,
    /// Where to write the CSV with the added columns.
    #[arg(long, value_name = "OUT", requires = "csv")]
    out: Option<PathBuf>,
    /// Worker threads for --csv (default: one per core).
    #[arg(long, value_name = "N", requires = "csv")]
    threads: Option<NonZeroUsize>,
    /// Numbers to check; without any, one number per line of stdin.
    numbers: Vec<String>,
}

pub fn run(cmd: PhoneCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PhoneCommand::Check(args) => {
            let region = args
                .region
                .as_deref()
                .map(DefaultRegion::parse)
                .transpose()
                .context("--region")?;
            match (&args.csv, &args.column, &args.out) {
                (Some(input), Some(column), Some(out)) => {
                    let threads = args
                        .threads
                        .or_else(|| std::thread::available_parallelism().ok())
                        .map_or(1, NonZeroUsize::get);
                    let summary = bulk::normalise(input, column, out, region, threads)?;
                    summary.print(args.json)?;
                }
                _ => check_numbers(&args.numbers, region, args.json)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One output line per argument, or per line of stdin.
fn check_numbers(
    numbers: &[String],
    region: Option<DefaultRegion>,
    json: bool,
) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let interactive = stdout.is_terminal();
    let mut out = BufWriter::new(stdout.lock());
    if !numbers.is_empty() {
        for number in numbers {
            write_line(&mut out, number, region, json)?;
        }
    } else {
        let stdin = io::stdin();
        let mut stdin = stdin.lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            if stdin
                .read_until(b'\n', &mut line)
                .context("reading stdin")?
                == 0
            {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            write_line(&mut out, text, region, json)?;
            if interactive {
                out.flush()?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The JSON form of one line; `error` appears only when parsing failed.
#[derive(Serialize)]
struct JsonLine<'a> {
    input: &'a str,
    e164: Option<&'a str>,
    valid: bool,
    #[serde(rename = "type")]
    number_type: Option<NumberType>,
    region: Option<&'a str>,
    possible: Option<Possibility>,
    carrier: Option<&'a str>,
    time_zones: Option<&'a [&'a str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ParseErrorKind>,
}

fn write_line(
    out: &mut impl Write,
    input: &str,
    region: Option<DefaultRegion>,
    json: bool,
) -> anyhow::Result<()> {
    let report = check(input, region);
    if json {
        let line = JsonLine {
            input,
            e164: report.expose_e164(),
            valid: report.is_valid(),
            number_type: report.number_type(),
            region: report.region(),
            possible: report.possible(),
            carrier: report.carrier(),
            time_zones: report.time_zones(),
            error: report.error(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)?;
        return Ok(());
    }
    // Text: input, E.164, verdict, type, region, length verdict, carrier, time zones;
    // tab-separated with "-" for nothing. Tabs and line breaks inside the input become
    // spaces.
    let input = input.replace(['\t', '\n', '\r'], " ");
    let verdict = match (report.error(), report.is_valid()) {
        (Some(kind), _) => kind.as_str(),
        (None, true) => "valid",
        (None, false) => "invalid",
    };
    let zones = report
        .time_zones()
        .map(|z| z.join(","))
        .filter(|z| !z.is_empty());
    writeln!(
        out,
        "{input}\t{}\t{verdict}\t{}\t{}\t{}\t{}\t{}",
        report.expose_e164().unwrap_or("-"),
        report.number_type().map_or("-", NumberType::as_str),
        report.region().unwrap_or("-"),
        report.possible().map_or("-", Possibility::as_str),
        report.carrier().unwrap_or("-"),
        zones.as_deref().unwrap_or("-"),
    )?;
    Ok(())
}

/// CSV normalisation of a whole user base.
mod bulk {
    use super::*;

    /// Rows handed to the workers at once.
    const CHUNK_ROWS: usize = 32 * 1024;
    /// Files at least this large get a progress bar (when stderr is a terminal).
    const PROGRESS_BYTES: u64 = 8 * 1024 * 1024;
    /// Regions listed one by one in the text summary (all of them in JSON).
    const TOP_REGIONS: usize = 20;
    /// Columns appended to every row, in this order.
    const ADDED: [&str; 5] = ["e164", "valid", "type", "region", "error"];

    /// What one row's number came to.
    enum Outcome {
        Valid(E164),
        /// Parses, but libphonenumber does not call it valid.
        NotValid,
        Error(ParseErrorKind),
    }

    #[derive(Default, Serialize)]
    pub(super) struct Summary {
        rows: u64,
        valid: u64,
        not_valid: u64,
        /// Parse errors by kind.
        errors: BTreeMap<&'static str, u64>,
        /// Valid numbers by type.
        types: BTreeMap<&'static str, u64>,
        /// Valid numbers by region.
        regions: BTreeMap<String, u64>,
        /// Distinct E.164 numbers among the valid rows.
        distinct_numbers: u64,
        /// Valid rows whose E.164 number an earlier row already holds.
        duplicate_rows: u64,
        /// E.164 numbers held by more than one row.
        numbers_on_several_rows: u64,
    }

    /// A chunk of rows in flight, numbered so the writer can restore input order.
    struct Chunk {
        seq: u64,
        /// How far into the file the reader was after this chunk, for the progress bar.
        end_byte: u64,
        records: Vec<csv::ByteRecord>,
        outcomes: Vec<Outcome>,
    }

    /// Reads `input`, classifies the `column` on `threads` worker threads and writes the
    /// rows with the added columns to `output`, in input order.
    ///
    /// A pipeline: one thread reads chunks of rows, the workers classify them and append
    /// the columns, and this thread writes them back in order and keeps the summary.
    /// Channels are bounded, so memory stays at a few chunks whatever the file size, and
    /// chunks' record buffers go back to the reader to be reused.
    pub(super) fn normalise(
        input: &Path,
        column: &str,
        output: &Path,
        region: Option<DefaultRegion>,
        threads: usize,
    ) -> anyhow::Result<Summary> {
        let file = File::open(input).with_context(|| format!("opening {}", input.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .buffer_capacity(1 << 20)
            .from_reader(file);
        let headers = reader
            .byte_headers()
            .context("reading the header row")?
            .clone();
        let Some(index) = headers.iter().position(|h| h == column.as_bytes()) else {
            let names: Vec<_> = headers.iter().map(String::from_utf8_lossy).collect();
            bail!(
                "no column {column:?} in {}; columns: {}",
                input.display(),
                names.join(", ")
            );
        };
        if let Some(taken) = ADDED
            .iter()
            .find(|a| headers.iter().any(|h| h == a.as_bytes()))
        {
            bail!(
                "{} already has a column {taken:?}; rename it first",
                input.display()
            );
        }
        let out = File::create(output).with_context(|| format!("creating {}", output.display()))?;
        let mut writer = csv::WriterBuilder::new()
            .flexible(true)
            .buffer_capacity(1 << 20)
            .from_writer(out);
        let mut header_out = headers.clone();
        for name in ADDED {
            header_out.push_field(name.as_bytes());
        }
        writer.write_byte_record(&header_out)?;

        let progress = progress_bar(size);
        let mut summary = Summary::default();
        let mut seen: HashMap<u128, u32> = HashMap::new();
        let threads = threads.max(1);
        let (work_tx, work_rx) = mpsc::sync_channel::<Chunk>(threads);
        // Only the workers hold the receiving end: once they are gone (the writer
        // stopped), the reader's next send fails and it stops too.
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (done_tx, done_rx) = mpsc::sync_channel::<Chunk>(threads * 2);
        let (free_tx, free_rx) = mpsc::channel::<Vec<csv::ByteRecord>>();

        std::thread::scope(|scope| -> anyhow::Result<()> {
            let reading = scope.spawn(move || -> anyhow::Result<()> {
                for seq in 0.. {
                    let mut records = free_rx.try_recv().unwrap_or_default();
                    let mut filled = 0;
                    while filled < CHUNK_ROWS {
                        if filled == records.len() {
                            records.push(csv::ByteRecord::new());
                        }
                        if !reader.read_byte_record(&mut records[filled])? {
                            break;
                        }
                        filled += 1;
                    }
                    if filled == 0 {
                        break;
                    }
                    records.truncate(filled);
                    let chunk = Chunk {
                        seq,
                        end_byte: reader.position().byte(),
                        records,
                        outcomes: Vec::new(),
                    };
                    if work_tx.send(chunk).is_err() {
                        break; // the writer stopped on an error of its own
                    }
                }
                Ok(())
            });
            for _ in 0..threads {
                let done_tx = done_tx.clone();
                let work_rx = Arc::clone(&work_rx);
                scope.spawn(move || loop {
                    let next = work_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok(mut chunk)) = next else { break };
                    classify_chunk(&mut chunk, index, region);
                    if done_tx.send(chunk).is_err() {
                        break;
                    }
                });
            }
            drop(done_tx);
            drop(work_rx);

            // Write in input order; chunks that arrive early wait in `pending`.
            let mut pending: BTreeMap<u64, Chunk> = BTreeMap::new();
            let mut next_seq = 0;
            for chunk in done_rx {
                pending.insert(chunk.seq, chunk);
                while let Some(chunk) = pending.remove(&next_seq) {
                    for (record, outcome) in chunk.records.iter().zip(&chunk.outcomes) {
                        summary.count(outcome, &mut seen);
                        writer.write_byte_record(record)?;
                    }
                    if let Some(bar) = &progress {
                        bar.set_position(chunk.end_byte);
                    }
                    let _ = free_tx.send(chunk.records);
                    next_seq += 1;
                }
            }
            reading.join().expect("reader thread panicked")?;
            Ok(())
        })?;
        writer.flush()?;
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        summary.distinct_numbers = seen.len() as u64;
        summary.numbers_on_several_rows = seen.values().filter(|&&n| n > 1).count() as u64;
        Ok(summary)
    }

    fn progress_bar(size: u64) -> Option<indicatif::ProgressBar> {
        if size < PROGRESS_BYTES || !io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        Some(bar)
    }

    /// Classifies a chunk's numbers and appends the added columns to its rows.
    fn classify_chunk(chunk: &mut Chunk, index: usize, region: Option<DefaultRegion>) {
        chunk.outcomes.clear();
        for record in &mut chunk.records {
            let field = record.get(index).unwrap_or_default();
            let outcome = classify_number(&String::from_utf8_lossy(field), region);
            append(record, &outcome);
            chunk.outcomes.push(outcome);
        }
    }

    fn classify_number(text: &str, region: Option<DefaultRegion>) -> Outcome {
        match E164::parse_in(text, region) {
            Ok(number) => Outcome::Valid(number),
            Err(PhoneError::Parse(kind)) => Outcome::Error(kind),
            Err(_) => Outcome::NotValid,
        }
    }

    /// Appends the `ADDED` columns.
    fn append(record: &mut csv::ByteRecord, outcome: &Outcome) {
        match outcome {
            Outcome::Valid(number) => {
                record.push_field(number.expose().as_bytes());
                record.push_field(b"true");
                record.push_field(number.number_type().as_str().as_bytes());
                record.push_field(number.region().unwrap_or_default().as_bytes());
                record.push_field(b"");
            }
            Outcome::NotValid => {
                for field in ["", "false", "", "", "not_valid"] {
                    record.push_field(field.as_bytes());
                }
            }
            Outcome::Error(kind) => {
                for field in ["", "false", "", "", kind.as_str()] {
                    record.push_field(field.as_bytes());
                }
            }
        }
    }

    impl Summary {
        fn count(&mut self, outcome: &Outcome, seen: &mut HashMap<u128, u32>) {
            self.rows += 1;
            match outcome {
                Outcome::Valid(number) => {
                    self.valid += 1;
                    *self.types.entry(number.number_type().as_str()).or_default() += 1;
                    let region = number.region().unwrap_or("-");
                    match self.regions.get_mut(region) {
                        Some(n) => *n += 1,
                        None => {
                            self.regions.insert(region.to_owned(), 1);
                        }
                    }
                    // The digits after "+" never start with 0, so their value is a
                    // faithful key (at most 20 digits fit a u128).
                    let key = number.expose()[1..]
                        .bytes()
                        .fold(0u128, |k, d| k * 10 + u128::from(d - b'0'));
                    let holders = seen.entry(key).or_default();
                    if *holders > 0 {
                        self.duplicate_rows += 1;
                    }
                    *holders += 1;
                }
                Outcome::NotValid => self.not_valid += 1,
                Outcome::Error(kind) => *self.errors.entry(kind.as_str()).or_default() += 1,
            }
        }

        pub(super) fn print(&self, json: bool) -> anyhow::Result<()> {
            let stdout = io::stdout();
            let mut out = stdout.lock();
            if json {
                serde_json::to_writer(&mut out, self)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(out, "rows: {}", self.rows)?;
            writeln!(out, "valid: {}", self.valid)?;
            writeln!(out, "not valid: {}", self.not_valid)?;
            for (kind, n) in &self.errors {
                writeln!(out, "error {kind}: {n}")?;
            }
            for (kind, n) in &self.types {
                writeln!(out, "type {kind}: {n}")?;
            }
            let mut regions: Vec<_> = self.regions.iter().collect();
            regions.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (region, n) in regions.iter().take(TOP_REGIONS) {
                writeln!(out, "region {region}: {n}")?;
            }
            if regions.len() > TOP_REGIONS {
                let rest: u64 = regions[TOP_REGIONS..].iter().map(|(_, n)| **n).sum();
                let others = regions.len() - TOP_REGIONS;
                writeln!(out, "region (other {others}): {rest}")?;
            }
            writeln!(out, "distinct numbers: {}", self.distinct_numbers)?;
            writeln!(
                out,
                "duplicates: {} rows repeat a number held by an earlier row ({} numbers on several rows)",
                self.duplicate_rows, self.numbers_on_several_rows
            )?;
            Ok(())
        }
    }
}
