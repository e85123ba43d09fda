//! Where messages go. Real providers come later; these are the development sinks and
//! the recording sink tests use.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::future::join_all;
use serde::Serialize;

use super::OutgoingMessage;
use crate::clock::{rfc3339, Clock, SystemClock};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth trying again later (network, provider overloaded).
    #[error("temporary delivery failure: {0}")]
    Temporary(String),
    /// Will never work (number refused by the provider).
    #[error("permanent delivery failure: {0}")]
    Permanent(String),
}

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Sends one message; returns the provider's reference, if any.
    async fn send(&self, msg: &OutgoingMessage) -> Result<Option<String>, SendError>;

    /// Sends several messages: one outcome per message, in their order. By default
    /// each is a `send` of its own, all under way at once; a sink that can take many
    /// messages in one operation overrides it.
    async fn send_many(&self, msgs: &[&OutgoingMessage]) -> Vec<Result<Option<String>, SendError>> {
        join_all(msgs.iter().map(|m| self.send(m))).await
    }
}

/// The `--sms-sink` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    Console,
    File(PathBuf),
}

impl std::str::FromStr for SinkSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "console" => Ok(Self::Console),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(format!("expected `console` or `file:PATH`, got `{s}`")),
            },
        }
    }
}

impl SinkSpec {
    pub fn build(&self) -> anyhow::Result<Arc<dyn Sink>> {
        Ok(match self {
            Self::Console => Arc::new(ConsoleSink),
            Self::File(p) => Arc::new(FileSink::open(p.clone())?),
        })
    }
}

impl std::fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Console => f.write_str("console"),
            Self::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// Development sink: prints each message to standard output, with the recipient
/// masked. It shows the code, which is what a developer needs and why it is not for
/// production.
#[derive(Debug, Default)]
pub struct ConsoleSink;

#[async_trait]
impl Sink for ConsoleSink {
    async fn send(&self, msg: &OutgoingMessage) -> Result<Option<String>, SendError> {
        let to = ringfence_phone::StoredE164::from_e164(&msg.to)
            .map(|n| n.masked())
            .unwrap_or_else(|_| "•••".into());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "[{} to {}] {}",
            msg.channel.as_str(),
            to,
            msg.body.replace('\n', " ⏎ ")
        );
        Ok(None)
    }
}

/// Stands in for the phone: appends one JSON object per message (`to`, `channel`,
/// `body`, `created_at`, `message_id`, `attempt`, `verification_id`) to a file.
#[derive(Debug)]
pub struct FileSink {
    file: Mutex<std::fs::File>,
}

impl FileSink {
    pub fn open(path: PathBuf) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("sms_sink: cannot open {}: {e}", path.display()))?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }
}

/// One line of the file sink.
#[derive(Serialize)]
struct FileLine<'a> {
    to: &'a str,
    channel: &'static str,
    body: &'a str,
    created_at: &'a str,
    message_id: i64,
    attempt: u32,
    verification_id: &'a str,
}

impl FileSink {
    /// Appends one line per message with a single write(2): on an O_APPEND file,
    /// lines of concurrent writes never interleave. If the write fails, every message
    /// of it fails (temporarily: they are retried, and a line may then appear twice,
    /// as a provider that timed out may deliver twice).
    fn append(&self, msgs: &[&OutgoingMessage]) -> Vec<Result<Option<String>, SendError>> {
        let created_at = rfc3339(SystemClock.now());
        let mut buf = Vec::with_capacity(msgs.len() * 256);
        for msg in msgs {
            let line = FileLine {
                to: &msg.to,
                channel: msg.channel.as_str(),
                body: &msg.body,
                created_at: &created_at,
                message_id: msg.message_id,
                attempt: msg.attempt,
                verification_id: &msg.verification_id,
            };
            serde_json::to_writer(&mut buf, &line).expect("JSON serialises");
            buf.push(b'\n');
        }
        let written = {
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            f.write_all(&buf)
        };
        msgs.iter()
            .map(|msg| match &written {
                Ok(()) => Ok(Some(format!("file-{}", msg.message_id))),
                Err(e) => Err(SendError::Temporary(e.to_string())),
            })
            .collect()
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn send(&self, msg: &OutgoingMessage) -> Result<Option<String>, SendError> {
        self.append(&[msg]).pop().expect("one outcome per message")
    }

    async fn send_many(&self, msgs: &[&OutgoingMessage]) -> Vec<Result<Option<String>, SendError>> {
        self.append(msgs)
    }
}

/// Keeps every message in memory; tests and the demo read codes from it. It can be
/// told to fail, to exercise retries.
#[derive(Debug, Default, Clone)]
pub struct RecordingSink {
    inner: Arc<Mutex<RecordingState>>,
}

#[derive(Debug, Default)]
struct RecordingState {
    sent: Vec<OutgoingMessage>,
    fail_next: Vec<SendError>,
}

impl RecordingSink {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn messages(&self) -> Vec<OutgoingMessage> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sent
            .clone()
    }

    /// The next sends fail with these errors, in order.
    pub fn fail_next(&self, errors: Vec<SendError>) {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.fail_next = errors;
        st.fail_next.reverse();
    }
}

#[async_trait]
impl Sink for RecordingSink {
    async fn send(&self, msg: &OutgoingMessage) -> Result<Option<String>, SendError> {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = st.fail_next.pop() {
            return Err(e);
        }
        st.sent.push(msg.clone());
        Ok(Some(format!("rec-{}", msg.message_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_spec_parses_and_names_the_problem() {
        assert_eq!("console".parse::<SinkSpec>(), Ok(SinkSpec::Console));
        assert_eq!(
            "file:/tmp/x".parse::<SinkSpec>(),
            Ok(SinkSpec::File("/tmp/x".into()))
        );
        assert!("file:"
            .parse::<SinkSpec>()
            .unwrap_err()
            .contains("file:PATH"));
        assert!("twilio".parse::<SinkSpec>().is_err());
    }

    fn message(id: i64, to: &str) -> OutgoingMessage {
        OutgoingMessage {
            message_id: id,
            attempt: 1,
            verification_id: format!("VE{id}"),
            channel: crate::verify::Channel::Sms,
            to: to.into(),
            body: format!("Your code is \"{id}\"\n"),
        }
    }

    /// A batch is one line per message, in order, each a whole JSON object.
    #[tokio::test]
    async fn the_file_sink_appends_a_line_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sms.jsonl");
        let sink = FileSink::open(path.clone()).unwrap();
        let (a, b, c) = (
            message(1, "+447900000001"),
            message(2, "+447900000002"),
            message(3, "+447900000003"),
        );
        let refs = sink.send_many(&[&a, &b]).await;
        assert_eq!(
            refs,
            [Ok(Some("file-1".to_owned())), Ok(Some("file-2".to_owned()))]
        );
        assert_eq!(sink.send(&c).await, Ok(Some("file-3".to_owned())));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        for (line, msg) in lines.iter().zip([&a, &b, &c]) {
            assert_eq!(line["to"], msg.to.as_str());
            assert_eq!(line["body"], msg.body.as_str());
            assert_eq!(line["channel"], "sms");
            assert_eq!(line["message_id"], msg.message_id);
            assert_eq!(line["attempt"], 1);
            assert_eq!(line["verification_id"], msg.verification_id.as_str());
            assert!(rfc3339_parses(line["created_at"].as_str().unwrap()));
        }
    }

    fn rfc3339_parses(s: &str) -> bool {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
    }

    /// A write that fails fails every message of it, as worth retrying.
    #[tokio::test]
    async fn a_failed_write_fails_the_whole_batch_temporarily() {
        let sink = FileSink::open("/dev/full".into()).unwrap();
        let (a, b) = (message(1, "+447900000001"), message(2, "+447900000002"));
        let outcomes = sink.send_many(&[&a, &b]).await;
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, Err(SendError::Temporary(_)))));
    }
}
