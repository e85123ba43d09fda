//! `ringfence phone check` as an operator runs it: numbers as arguments, on stdin, and a
//! CSV column. One output line per input line, always in input order.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn ringfence(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringfence");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn arguments_give_one_text_line_each() {
    let out = stdout(&ringfence(
        &[
            "phone",
            "check",
            "--region",
            "GB",
            "07400 123456",
            "hello",
            "+1 650 253 0000",
        ],
        "",
    ));
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        [
            "07400 123456",
            "+447400123456",
            "valid",
            "mobile",
            "GB",
            "is_possible",
            "Three",
            "Europe/Guernsey,Europe/Isle_of_Man,Europe/Jersey,Europe/London"
        ]
    );
    assert_eq!(
        lines[1],
        ["hello", "-", "not_a_number", "-", "-", "-", "-", "-"]
    );
    assert_eq!(
        lines[2][1..5],
        ["+16502530000", "valid", "fixed_line_or_mobile", "US"]
    );
}

#[test]
fn stdin_json_has_one_object_per_line_in_order() {
    let input = "+44 7400 123456\n\n0800 123 4567\r\n+44 7400 12345\n+800 1234 5678\nfoo";
    let out = stdout(&ringfence(
        &["phone", "check", "--json", "--region", "GB"],
        input,
    ));
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6, "{out}");
    let keys = [
        "input",
        "e164",
        "valid",
        "type",
        "region",
        "possible",
        "carrier",
        "time_zones",
    ];
    for row in &rows {
        for key in keys {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
        assert_eq!(row.get("error").is_some(), row["e164"].is_null(), "{row}");
    }
    assert_eq!(rows[0]["e164"], "+447400123456");
    assert_eq!(rows[0]["carrier"], "Three");
    assert_eq!(rows[1]["input"], "");
    assert_eq!(rows[1]["error"], "not_a_number");
    assert_eq!(rows[2]["input"], "0800 123 4567");
    assert_eq!(rows[2]["type"], "toll_free");
    assert_eq!(rows[3]["valid"], false);
    assert_eq!(rows[3]["possible"], "is_possible");
    assert!(rows[3]["region"].is_null());
    assert_eq!(rows[3]["time_zones"], serde_json::json!(["Etc/Unknown"]));
    assert_eq!(rows[4]["region"], "001");
    assert_eq!(rows[5]["error"], "not_a_number");
}

#[test]
fn unknown_region_is_refused() {
    let output = ringfence(&["phone", "check", "--region", "XX", "123"], "");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("XX"));
}

#[test]
fn csv_column_is_normalised_in_order_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("users.csv");
    let output = dir.path().join("out.csv");
    std::fs::write(
        &input,
        "id,phone\n1,+44 7400 123456\n2,07400-123-456\n3,not a phone\n4,\"+44 (0)20 7946 0958\"\n5,+44 7400 12345\n6,00447400123456\n",
    )
    .unwrap();
    let summary = stdout(&ringfence(
        &[
            "phone",
            "check",
            "--json",
            "--region",
            "GB",
            "--threads",
            "2",
            "--csv",
            input.to_str().unwrap(),
            "--column",
            "phone",
            "--out",
            output.to_str().unwrap(),
        ],
        "",
    ));
    let written = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(
        lines,
        [
            "id,phone,e164,valid,type,region,error",
            "1,+44 7400 123456,+447400123456,true,mobile,GB,",
            "2,07400-123-456,+447400123456,true,mobile,GB,",
            "3,not a phone,,false,,,not_a_number",
            "4,+44 (0)20 7946 0958,+442079460958,true,fixed_line,GB,",
            "5,+44 7400 12345,,false,,,not_valid",
            "6,00447400123456,+447400123456,true,mobile,GB,",
        ]
    );
    let summary: Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(summary["rows"], 6);
    assert_eq!(summary["valid"], 4);
    assert_eq!(summary["not_valid"], 1);
    assert_eq!(summary["errors"]["not_a_number"], 1);
    assert_eq!(summary["distinct_numbers"], 2);
    assert_eq!(summary["duplicate_rows"], 2);
    assert_eq!(summary["numbers_on_several_rows"], 1);
}

#[test]
fn csv_without_the_column_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("users.csv");
    std::fs::write(&input, "id,mobile\n1,+447400123456\n").unwrap();
    let out = dir.path().join("out.csv");
    let output = ringfence(
        &[
            "phone",
            "check",
            "--csv",
            input.to_str().unwrap(),
            "--column",
            "phone",
            "--out",
            out.to_str().unwrap(),
        ],
        "",
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("mobile"));
}
