//! Delivery through a transactional outbox.
//!
//! A verification and its message are committed in one transaction (see
//! `store::Store::start_verification`); this module's worker claims due messages with a
//! lease, opens the sealed payload with the subject's key, hands it to the configured
//! sink and records the outcome. Guarantees:
//! - a message is never sent after its code expired (the claim erases those instead);
//! - the content (number and code) is erased from the database once the message is
//!   sent, expired, canceled or failed, so the code is readable only in flight;
//! - a worker that dies mid-send leaves a lease that runs out, and the message is
//!   claimed again (at-least-once towards the sink; idempotent sinks de-duplicate on
//!   `message_id`).
//!
//! The hot path skips the claim: when the worker has room ([`OutboxHandle::reserve`]),
//! the request queues its message already claimed (attempt 1, leased) and, once the
//! transaction committed, hands the plaintext it still holds to the worker over a
//! bounded channel ([`Handoff`]). Nothing is lost if the process dies in between: the
//! row is committed, its lease runs out, and any worker claims it from the database.

mod sinks;
mod worker;

pub use sinks::{ConsoleSink, FileSink, RecordingSink, SendError, Sink, SinkSpec};
pub use worker::{OutboxWorker, WorkerSettings};

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::clock::Millis;
use crate::crypto::{BlindIndex, DataKey};
use crate::verify::Channel;

/// A message queued claimed by the request that created it, handed to the worker.
pub struct Handoff {
    pub message: OutgoingMessage,
    /// The code's expiry: past it the message is not sent.
    pub not_after: Millis,
    /// The recipient's prefix for the pumping detector, from the start's decision: the
    /// delivery is counted under it without parsing the number again.
    pub prefix: Option<crate::abuse::pumping::Prefix>,
}

/// The HTTP side's handle on the outbox worker.
#[derive(Clone)]
pub struct OutboxHandle {
    wake: Arc<Notify>,
    handoff: mpsc::Sender<Handoff>,
    lease_ms: i64,
}

/// Room for one message in the worker's hand-over queue, taken before the message is
/// queued (so a full queue means "queue it unclaimed", never "drop it").
pub struct HandoffSlot {
    permit: mpsc::OwnedPermit<Handoff>,
    /// How long the claim taken at queueing time holds.
    pub lease_ms: i64,
}

impl HandoffSlot {
    pub fn send(self, handoff: Handoff) {
        self.permit.send(handoff);
    }
}

impl OutboxHandle {
    /// A handle and the receiving end for [`OutboxWorker::run`](crate::delivery::OutboxWorker::run). `capacity` bounds the
    /// messages waiting in memory; `lease_ms` is the worker's lease.
    pub fn new(capacity: usize, lease_ms: i64) -> (Self, mpsc::Receiver<Handoff>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let handle = Self {
            wake: Arc::new(Notify::new()),
            handoff: tx,
            lease_ms,
        };
        (handle, rx)
    }

    /// Room to hand a message over, if the worker is keeping up.
    pub fn reserve(&self) -> Option<HandoffSlot> {
        let permit = self.handoff.clone().try_reserve_owned().ok()?;
        Some(HandoffSlot {
            permit,
            lease_ms: self.lease_ms,
        })
    }

    /// Tells the worker that messages were queued in the database.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

/// What the outbox row holds, sealed under the subject's key.
#[derive(Serialize, Deserialize)]
pub struct Payload {
    pub to: String,
    pub body: String,
}

impl Payload {
    pub fn seal(&self, key: &DataKey, bi: &BlindIndex) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("payload serialises");
        key.seal(&json, &payload_aad(bi))
    }

    pub fn open(key: &DataKey, bi: &BlindIndex, sealed: &[u8]) -> Option<Self> {
        let json = key.open(sealed, &payload_aad(bi)).ok()?;
        serde_json::from_slice(&json).ok()
    }
}

fn payload_aad(bi: &BlindIndex) -> Vec<u8> {
    let mut aad = b"outbox:".to_vec();
    aad.extend_from_slice(&bi.0);
    aad
}

/// A message handed to a sink.
#[derive(Clone)]
pub struct OutgoingMessage {
    pub message_id: i64,
    /// Which delivery attempt of the message this is (1 for the first claim). A message
    /// claimed again after a worker died gets a new attempt number, so
    /// `(message_id, attempt)` identifies one send: a provider that takes an
    /// idempotency key gets exactly this pair.
    pub attempt: u32,
    pub verification_id: String,
    pub channel: Channel,
    /// E.164 recipient. Sinks must not log it.
    pub to: String,
    pub body: String,
}

impl std::fmt::Debug for OutgoingMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingMessage")
            .field("message_id", &self.message_id)
            .field("verification_id", &self.verification_id)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}
