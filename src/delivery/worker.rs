//! The outbox worker: claim, open, send, record, repeat — and, on the hot path, send
//! what the HTTP side handed over already claimed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};

use super::{Handoff, OutgoingMessage, Payload, Sink};
use crate::abuse::pumping::Prefix;
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
    /// Pause after a round that did not fill its batch, so that under load one claim
    /// and one finish carry many messages instead of one each (every claim and finish
    /// is a write that competes with the starts for the store).
    pub coalesce: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            batch: 256,
            lease: Duration::from_secs(30),
            max_attempts: 5,
            backoff: Duration::from_secs(2),
            idle_poll: Duration::from_secs(1),
            coalesce: Duration::from_millis(10),
        }
    }
}

/// One message to send, from a claim or handed over.
struct Send {
    /// `None` when it cannot be sent (its payload could not be opened, or its code
    /// expired): recorded as failed.
    message: Option<OutgoingMessage>,
    id: i64,
    attempts: u32,
    not_after: Millis,
    prefix: Option<Prefix>,
}

pub struct OutboxWorker {
    pub store: Arc<dyn Store>,
    pub sink: Arc<dyn Sink>,
    pub kek: Kek,
    pub clock: Arc<dyn Clock>,
    pub wake: Arc<Notify>,
    pub settings: WorkerSettings,
    /// Told of every message a sink accepted (the pumping detector's deliveries).
    pub abuse: Option<Arc<crate::abuse::Engine>>,
}

impl OutboxWorker {
    /// Runs until `stop` turns true, then sends what was already handed over.
    pub async fn run(self, mut handoffs: mpsc::Receiver<Handoff>, mut stop: watch::Receiver<bool>) {
        let batch = self.settings.batch as usize;
        let mut hot = Vec::with_capacity(batch);
        loop {
            if *stop.borrow() {
                handoffs.close();
                while !hot.is_empty() || handoffs.recv_many(&mut hot, batch).await > 0 {
                    self.send_handed_over(std::mem::take(&mut hot)).await;
                }
                return;
            }
            // Handed-over messages first: they are the fresh ones, and sending them
            // costs no claim.
            while hot.len() < batch {
                match handoffs.try_recv() {
                    Ok(h) => hot.push(h),
                    Err(_) => break,
                }
            }
            if !hot.is_empty() {
                self.send_handed_over(std::mem::take(&mut hot)).await;
                self.coalesce(&mut stop).await;
                continue;
            }
            let handled = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox round failed; retrying");
                    0
                }
            };
            if handled >= batch {
                continue;
            }
            if handled > 0 {
                self.coalesce(&mut stop).await;
                continue;
            }
            let sleep = self.idle_sleep().await;
            tokio::select! {
                // Sent at the top of the loop, with whatever else has arrived.
                _ = handoffs.recv_many(&mut hot, batch) => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// A short pause after a round that did not fill its batch: under load, one finish
    /// (and one claim) then carries many messages instead of a few.
    async fn coalesce(&self, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(self.settings.coalesce) => {}
            _ = stop.changed() => {}
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
    pub async fn round(&self) -> Result<usize, crate::store::StoreError> {
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
        let sends = claim.items.into_iter().map(|item| Send {
            message: self.open(&item),
            id: item.id,
            attempts: item.attempts,
            not_after: item.not_after,
            prefix: None,
        });
        self.send_all(sends.collect()).await
    }

    /// Sends messages handed over by the HTTP side (claimed when they were queued).
    async fn send_handed_over(&self, handoffs: Vec<Handoff>) {
        let now = self.clock.now();
        let sends = handoffs
            .into_iter()
            .map(|h| Send {
                id: h.message.message_id,
                attempts: h.message.attempt,
                not_after: h.not_after,
                // Past its expiry the code is useless: record it as failed rather than send.
                message: (h.not_after > now).then_some(h.message),
                prefix: h.prefix,
            })
            .collect();
        if let Err(e) = self.send_all(sends).await {
            // The leases run out and the messages are claimed again from the outbox.
            tracing::warn!(error = %e, "recording handed-over messages failed; they will be retried");
        }
    }

    /// Sends the batch through the sink at once, counts the deliveries for the pumping
    /// detector in one write of the counters, and records every outcome in one write of
    /// the store. If that write fails, the leases run out and the messages are claimed
    /// again.
    async fn send_all(&self, sends: Vec<Send>) -> Result<usize, crate::store::StoreError> {
        let n = sends.len();
        let messages: Vec<&OutgoingMessage> =
            sends.iter().filter_map(|s| s.message.as_ref()).collect();
        let mut outcomes = self.sink.send_many(&messages).await.into_iter();
        let mut delivered: HashMap<Prefix, u64> = HashMap::new();
        let mut results = Vec::with_capacity(n);
        for send in sends {
            let result = match &send.message {
                None => DeliveryResult::Failed {
                    error: "payload cannot be opened (subject erased, key mismatch or expired)"
                        .into(),
                },
                Some(msg) => match outcomes.next() {
                    Some(Ok(provider_ref)) => {
                        if let Some(p) = self.prefix_of(msg, send.prefix) {
                            *delivered.entry(p).or_default() += 1;
                        }
                        DeliveryResult::Sent { provider_ref }
                    }
                    Some(Err(e)) => self.after_failure(send.attempts, send.not_after, e),
                    None => self.after_failure(
                        send.attempts,
                        send.not_after,
                        super::SendError::Temporary("the sink gave no outcome".into()),
                    ),
                },
            };
            if let DeliveryResult::Failed { error } = &result {
                tracing::warn!(message_id = send.id, error = %error, "message failed");
            }
            results.push((send.id, result));
        }
        self.record_deliveries(delivered).await;
        if !results.is_empty() {
            self.store.finish_outbox(results, self.clock.now()).await?;
        }
        Ok(n)
    }

    /// The prefix a delivery counts under for the pumping detector: the start's when
    /// it came with the message, else the number's. `None` without the detector.
    fn prefix_of(&self, msg: &OutgoingMessage, handed_over: Option<Prefix>) -> Option<Prefix> {
        let engine = self.abuse.as_ref()?;
        handed_over.or_else(|| {
            ringfence_phone::StoredE164::from_e164(&msg.to)
                .ok()
                .and_then(|n| engine.prefix(n.country_code(), n.national_significant_number()))
        })
    }

    async fn record_deliveries(&self, delivered: HashMap<Prefix, u64>) {
        let Some(engine) = &self.abuse else { return };
        if delivered.is_empty() {
            return;
        }
        let counts: Vec<(Prefix, u64)> = delivered.into_iter().collect();
        if let Err(e) = engine.record_deliveries(&counts, self.clock.now()).await {
            tracing::warn!(error = %e, "deliveries not recorded for the pumping detector");
        }
    }

    fn after_failure(
        &self,
        attempts: u32,
        not_after: Millis,
        e: super::SendError,
    ) -> DeliveryResult {
        let now = self.clock.now();
        match e {
            super::SendError::Permanent(m) => DeliveryResult::Failed { error: m },
            super::SendError::Temporary(m) => {
                let factor = 1u32 << attempts.saturating_sub(1).min(10);
                let at: Millis = now + (self.settings.backoff * factor).as_millis() as i64;
                if attempts >= self.settings.max_attempts || at >= not_after {
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
