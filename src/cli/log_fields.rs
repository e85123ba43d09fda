//! Span fields of the JSON log format, written as a JSON object directly.
//!
//! The JSON formatter keeps each span's fields as the text of a JSON object, made when
//! the span is created, and embeds it in the lines logged inside the span. Every
//! request has a span (method, route, request id), so that text is made for every
//! request, whether or not anything is logged in it. tracing-subscriber's own
//! `JsonFields` builds a map of JSON values and serialises it; [`JsonSpanFields`]
//! writes the same object in one pass (a span's creation went from 8,800 to 4,800
//! instructions: docs/BENCHMARKS.md). The lines read the same (a test compares them).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

/// Formats span fields as a JSON object: `{"name":value,…}`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut object = Object::new(&mut writer);
        fields.record(&mut object);
        object.finish()
    }

    /// Fields recorded on the span later: appended to its object.
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        let mut object = Object::new(&mut added);
        fields.record(&mut object);
        object.finish()?;
        if added.len() <= 2 {
            return Ok(()); // `{}`: nothing new
        }
        let open = current.fields.trim_end();
        if open.len() <= 2 {
            current.fields = added;
        } else {
            // `{a}` + `{b}` → `{a,b}`; a name recorded again reads as its last value.
            current.fields.truncate(open.len() - 1);
            current.fields.push(',');
            current.fields.push_str(&added[1..]);
        }
        Ok(())
    }
}

/// A JSON object being written; the first error stops it.
struct Object<'a, W: fmt::Write> {
    out: &'a mut W,
    empty: bool,
    result: fmt::Result,
}

impl<'a, W: fmt::Write> Object<'a, W> {
    fn new(out: &'a mut W) -> Self {
        let result = out.write_char('{');
        Self {
            out,
            empty: true,
            result,
        }
    }

    /// Writes `"name":` (after a comma unless first), then `value`.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !self.empty {
                self.out.write_char(',')?;
            }
            self.empty = false;
            write_str(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }

    fn finish(self) -> fmt::Result {
        self.result?;
        self.out.write_char('}')
    }
}

impl<W: fmt::Write> Visit for Object<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| write_str(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // As tracing-subscriber's JSON does: the value's Debug text, as a string.
        let text = format!("{value:?}");
        self.field(field, |w| write_str(w, &text));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: `null`, as serde_json writes them.
        if value.is_finite() {
            let text = serde_json::to_string(&value).map_err(|_| fmt::Error);
            self.field(field, |w| w.write_str(&text?));
        } else {
            self.field(field, |w| w.write_str("null"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let text = value.to_string();
        self.field(field, |w| write_str(w, &text));
    }
}

/// `s` as a JSON string, escaped as serde_json escapes it.
fn write_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        w.write_str(&s[plain..i])?;
        if escape.is_empty() {
            write!(w, "\\u{b:04x}")?;
        } else {
            w.write_str(escape)?;
        }
        plain = i + 1;
    }
    w.write_str(&s[plain..])?;
    w.write_char('"')
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// The lines logged inside spans with every kind of value, hostile strings among
    /// them, and a field recorded after the span was made.
    fn log_lines<N>(fields: N) -> Vec<serde_json::Value>
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .without_time()
            .fmt_fields(fields)
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let hostile = "quote \" backslash \\ newline \n tab \t nul \0 bell \x07 del \x7f é 漢 🙂 </script>";
            let span = tracing::info_span!(
                "request",
                method = "POST",
                route = "/v1/verifications/{id}/check",
                request_id = hostile,
                n = -42i64,
                big = u64::MAX,
                yes = true,
                ratio = 0.25f64,
                nan = f64::NAN,
                debug = ?Some("x\"y"),
                later = tracing::field::Empty,
            );
            let _in = span.enter();
            tracing::info!("before");
            span.record("later", "recorded \"later\"");
            tracing::warn!(code = 7, "after");
            let empty = tracing::info_span!("empty");
            let _in = empty.enter();
            tracing::info!("nested");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    }

    #[test]
    fn lines_read_as_with_the_json_fields_of_tracing_subscriber() {
        let theirs = log_lines(tracing_subscriber::fmt::format::JsonFields::new());
        let ours = log_lines(JsonSpanFields);
        assert_eq!(theirs.len(), 3);
        assert_eq!(ours, theirs);
        // The comparison sees the fields: they are there, hostile string intact.
        assert_eq!(ours[0]["span"]["method"], "POST");
        assert!(ours[0]["span"]["request_id"]
            .as_str()
            .unwrap()
            .contains("nul \0 bell \x07"));
        assert_eq!(ours[1]["span"]["later"], "recorded \"later\"");
        assert_eq!(ours[2]["spans"][0]["big"], u64::MAX);
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let all: String = (0u8..0x80).map(char::from).chain("é漢🙂".chars()).collect();
        let mut ours = String::new();
        write_str(&mut ours, &all).unwrap();
        assert_eq!(ours, serde_json::to_string(&all).unwrap());
    }
}
