//! Where messages go. Real providers come later; these are the development sinks and
//! the recording sink tests use.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

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
        let to = ringfence_phone::E164::parse(&msg.to, None)
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

#[async_trait]
impl Sink for FileSink {
    async fn send(&self, msg: &OutgoingMessage) -> Result<Option<String>, SendError> {
        let line = serde_json::json!({
            "to": msg.to,
            "channel": msg.channel.as_str(),
            "body": msg.body,
            "created_at": rfc3339(SystemClock.now()),
            "message_id": msg.message_id,
            "attempt": msg.attempt,
            "verification_id": msg.verification_id,
        });
        let mut buf = serde_json::to_vec(&line).expect("JSON serialises");
        buf.push(b'\n');
        // One write(2) per line on an O_APPEND file: lines never interleave.
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&buf)
            .map_err(|e| SendError::Temporary(e.to_string()))?;
        Ok(Some(format!("file-{}", msg.message_id)))
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
}
