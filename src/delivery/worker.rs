//! The outbox worker: claim, open, send, record, repeat.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::{OutgoingMessage, Payload, Sink};
use crate::clock::{Clock, Millis};
use crate::crypto::Kek;
use crate::store::{DeliveryResult, OutboxItem, Store};

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Messages claimed per round.
    pub batch: u32,
    /// How long a claim holds before another worker may take the message.
    pub lease: Duration,
    /// Sends tried per message before it is marked failed.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub backoff: Duration,
    /// Longest sleep when there is nothing to do (a safety net: new messages wake the
    /// worker at once).
    pub idle_poll: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            batch: 256,
            lease: Duration::from_secs(30),
            max_attempts: 5,
            backoff: Duration::from_secs(2),
            idle_poll: Duration::from_secs(1),
        }
    }
}

pub struct OutboxWorker {
    pub store: Arc<dyn Store>,
    pub sink: Arc<dyn Sink>,
    pub kek: Kek,
    pub clock: Arc<dyn Clock>,
    pub wake: Arc<Notify>,
    pub settings: WorkerSettings,
}

impl OutboxWorker {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        loop {
            if *stop.borrow() {
                return;
            }
            let worked = match this.round().await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox round failed; retrying");
                    false
                }
            };
            if worked {
                continue;
            }
            let sleep = this.idle_sleep().await;
            tokio::select! {
                _ = this.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn idle_sleep(&self) -> Duration {
        let now = self.clock.now();
        match self.store.next_outbox_due().await {
            Ok(Some(due)) if due > now => {
                Duration::from_millis(u64::try_from(due - now).unwrap_or(0))
                    .min(self.settings.idle_poll)
            }
            Ok(Some(_)) => Duration::from_millis(20),
            _ => self.settings.idle_poll,
        }
    }

    /// One claim and its sends; returns how many messages were handled.
    pub async fn round(self: &Arc<Self>) -> Result<usize, crate::store::StoreError> {
        let now = self.clock.now();
        let lease_ms = self.settings.lease.as_millis() as i64;
        let claim = self
            .store
            .claim_outbox(now, self.settings.batch, lease_ms)
            .await?;
        if claim.expired > 0 {
            tracing::info!(
                count = claim.expired,
                "outbox messages expired before they could be sent"
            );
        }
        let n = claim.items.len();
        let mut tasks = tokio::task::JoinSet::new();
        for item in claim.items {
            let this = self.clone();
            tasks.spawn(async move { (item.id, this.deliver(item).await) });
        }
        let mut results = Vec::with_capacity(n);
        while let Some(done) = tasks.join_next().await {
            if let Ok(r) = done {
                results.push(r);
            }
        }
        // One write for the whole round. If it fails, the leases run out and the
        // messages are claimed again.
        if !results.is_empty() {
            self.store.finish_outbox(results, self.clock.now()).await?;
        }
        Ok(n)
    }

    async fn deliver(&self, item: OutboxItem) -> DeliveryResult {
        let result = match self.open(&item) {
            None => DeliveryResult::Failed {
                error: "payload cannot be opened (subject erased or key mismatch)".into(),
            },
            Some(msg) => match self.sink.send(&msg).await {
                Ok(provider_ref) => DeliveryResult::Sent { provider_ref },
                Err(e) => self.after_failure(&item, e),
            },
        };
        if let DeliveryResult::Failed { error } = &result {
            tracing::warn!(message_id = item.id, verification_id = %item.verification_id, error = %error, "message failed");
        }
        result
    }

    fn after_failure(&self, item: &OutboxItem, e: super::SendError) -> DeliveryResult {
        let now = self.clock.now();
        match e {
            super::SendError::Permanent(m) => DeliveryResult::Failed { error: m },
            super::SendError::Temporary(m) => {
                let factor = 1u32 << item.attempts.saturating_sub(1).min(10);
                let at: Millis = now + (self.settings.backoff * factor).as_millis() as i64;
                if item.attempts >= self.settings.max_attempts || at >= item.not_after {
                    DeliveryResult::Failed { error: m }
                } else {
                    DeliveryResult::Retry { at, error: m }
                }
            }
        }
    }

    fn open(&self, item: &OutboxItem) -> Option<OutgoingMessage> {
        let s = &item.subject;
        let key = self
            .kek
            .unwrap_key(s.wrapped_key.as_ref()?, &s.blind_index.0)
            .ok()?;
        let p = Payload::open(&key, &s.blind_index, &item.payload)?;
        Some(OutgoingMessage {
            message_id: item.id,
            attempt: item.attempts,
            verification_id: item.verification_id.clone(),
            channel: item.channel,
            to: p.to,
            body: p.body,
        })
    }
}
