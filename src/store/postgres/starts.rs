//! Starts, applied a batch at a time (see `batch.rs`).
//!
//! The common start is a number seen for the first time, without an Idempotency-Key:
//! for those the batch inserts every subject, verification and message with one
//! statement whatever the batch's size, which commits by itself: one round trip. Every
//! other start (a known number, an Idempotency-Key, a second start of one number in the
//! same batch) runs the one-at-a-time `start` afterwards, in a transaction of its own,
//! each in a savepoint so that its failure rolls back only its own writes.
//!
//! Locks are what keep this equivalent to one transaction per start. The slow path
//! first takes the advisory lock of every number it holds, in sorted order (so two
//! batches never wait on each other in a cycle), exactly the lock `start` takes for one
//! number, and then locks, in id order, the pending verifications it may change, the
//! order in which check batches lock them. The fast path needs no lock: it only writes
//! for numbers whose subject it creates, and the subjects' unique index decides who
//! that is. A start for the same number elsewhere that inserts the subject at the same
//! moment waits for this statement to commit and then finds the subject (and its
//! pending verification) as if it had come second, or this statement waits for it and
//! leaves the number to the slow path. Both paths insert subjects in the order of
//! their blind index, so two of them never wait on each other in a cycle.
//!
//! A start may join the queue before it is decided ([`UndecidedStart`]): its decision
//! is made while it waits for its batch. A batch first waits for the decisions of its
//! starts, without a connection (a decision may read the database: holding one would
//! let a full pool wait on itself), and writes the ones allowed; a withdrawn start is
//! answered `None`.

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, PgConnection, Postgres, Row, Transaction};

use super::batch::KeptConnections;
use super::{advisory_lock_key, start, LOCK_SUBJECT};
use crate::crypto::CodeHasher;
use crate::store::{
    NewSubject, NewVerification, Sealed, StartCmd, StartOutcome, StoreError, StoreResult,
    UndecidedStart, VerificationRow,
};

/// Applies a batch of starts once each is decided; see the module's comment.
pub(super) async fn run(
    conns: &KeptConnections,
    codes: &CodeHasher,
    services: &KnownServices,
    undecided: Vec<UndecidedStart>,
) -> StoreResult<Vec<StoreResult<Option<StartOutcome>>>> {
    let n = undecided.len();
    let (at, cmds): (Vec<usize>, Vec<StartCmd>) = futures_util::future::join_all(undecided)
        .await
        .into_iter()
        .enumerate()
        .filter_map(|(i, cmd)| Some((i, cmd?)))
        .unzip();
    let mut answers: Vec<StoreResult<Option<StartOutcome>>> = (0..n).map(|_| Ok(None)).collect();
    if cmds.is_empty() {
        return Ok(answers);
    }
    let mut conn = conns.take().await?;
    let (outs, healthy) = apply(&mut conn, codes, services, cmds).await;
    if healthy {
        conns.keep(conn);
    } else {
        // A failed transaction may have been left open on the server without sqlx
        // knowing (see `begin_locked`): this connection serves no one else.
        conn.close_on_drop();
    }
    for (i, out) in at.into_iter().zip(outs?) {
        answers[i] = out.map(Some);
    }
    Ok(answers)
}

// A `StartCmd` is `Send` but not `Sync` (its reseal closure), so no `&StartCmd` may
// live across an `await`: what the statements need is taken out of the commands first.
/// The outcomes, and whether the connection is fit for another batch.
async fn apply(
    conn: &mut PgConnection,
    codes: &CodeHasher,
    services: &KnownServices,
    cmds: Vec<StartCmd>,
) -> (StoreResult<Vec<StoreResult<StartOutcome>>>, bool) {
    let known = match services.existing(conn, &service_ids(&cmds)).await {
        Ok(known) => known,
        Err(e) => return (Err(e), false),
    };
    let unknown: Vec<bool> = cmds
        .iter()
        .map(|c| !known.contains(c.service_id.as_str()))
        .collect();
    let mut fast = match fast_path(conn, fresh_starts(codes, &cmds, &unknown)).await {
        Ok(fast) => fast,
        // The connection or the server failed: so would everything else.
        Err(e @ StoreError::Unavailable(_)) => return (Err(e), false),
        // One of the commands is at fault (the whole statement failed with it, and
        // wrote nothing): each command goes the slow path, in its own savepoint, so
        // that it fails alone.
        Err(e) => {
            tracing::warn!(error = %e, starts = cmds.len(), "batched start failed; starting one at a time");
            HashMap::new()
        }
    };
    let mut outs: Vec<Option<StoreResult<StartOutcome>>> = Vec::with_capacity(cmds.len());
    let mut slow = Vec::new();
    for (i, cmd) in cmds.into_iter().enumerate() {
        if unknown[i] {
            outs.push(Some(Err(StoreError::Internal(format!(
                "service {} does not exist",
                cmd.service_id
            )))));
            continue;
        }
        match fast.remove(&i) {
            Some((row, claimed_message)) => outs.push(Some(Ok(StartOutcome::Started {
                verification: row,
                resent: false,
                claimed_message,
            }))),
            None => {
                outs.push(None);
                slow.push((i, cmd));
            }
        }
    }
    let mut healthy = true;
    if !slow.is_empty() {
        let positions: Vec<usize> = slow.iter().map(|(i, _)| *i).collect();
        match slow_path(conn, codes, slow).await {
            Ok(done) => {
                for (i, out) in done {
                    outs[i] = Some(out);
                }
            }
            // The fast path's starts are committed: only the slow path's fail.
            Err(e) => {
                healthy = false;
                for i in positions {
                    outs[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    let outs = outs
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(StoreError::Internal("a start was not applied".into()))))
        .collect();
    (Ok(outs), healthy)
}

/// The starts the fast path left, one at a time in one transaction: their numbers
/// locked first, then their pending verifications. They run in the order of their blind
/// index (as the fast path inserts subjects), a number's starts in the batch's order.
async fn slow_path(
    conn: &mut PgConnection,
    codes: &CodeHasher,
    mut slow: Vec<(usize, StartCmd)>,
) -> StoreResult<Vec<(usize, StoreResult<StartOutcome>)>> {
    slow.sort_by(|(i, a), (j, b)| a.blind_index.0.cmp(&b.blind_index.0).then(i.cmp(j)));
    let keys = lock_keys(slow.iter().map(|(_, c)| c));
    let mut tx = begin_locked(conn, &keys).await?;
    let numbers: Vec<[u8; 32]> = slow.iter().map(|(_, c)| c.blind_index.0).collect();
    lock_pending(&mut tx, &numbers).await?;
    let mut done = Vec::with_capacity(slow.len());
    for (i, cmd) in slow {
        done.push((i, one_by_one(&mut tx, codes, cmd).await?));
    }
    tx.commit().await?;
    Ok(done)
}

/// The advisory-lock keys of the commands' numbers, sorted, each once.
fn lock_keys<'a>(cmds: impl Iterator<Item = &'a StartCmd>) -> Vec<i32> {
    let mut keys: Vec<i32> = cmds.map(|c| advisory_lock_key(&c.blind_index.0)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The services the batch's commands name, each once.
fn service_ids(cmds: &[StartCmd]) -> Vec<&str> {
    let mut ids: Vec<&str> = cmds.iter().map(|c| c.service_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Begins the batch's transaction and takes the advisory locks of its numbers, in the
/// (sorted) order given, in one round trip: the `BEGIN` and the locking `SELECT` go as
/// one simple query, with the keys (integers) written into it. If the `SELECT` fails
/// (say, on the statement timeout while it waits), the transaction is left open and
/// aborted on the server while sqlx counts none, which is why `run` closes the
/// connection of a batch that failed.
async fn begin_locked<'c>(
    conn: &'c mut PgConnection,
    keys: &[i32],
) -> StoreResult<Transaction<'c, Postgres>> {
    let keys: Vec<String> = keys.iter().map(i32::to_string).collect();
    // `unnest` yields the array in order, and the locks are taken row by row.
    let sql = format!(
        "BEGIN; SELECT count(pg_advisory_xact_lock({LOCK_SUBJECT}, k)) FROM unnest(ARRAY[{}]::int4[]) AS k",
        keys.join(",")
    );
    Ok(conn.begin_with(sql).await?)
}

/// The services that exist, of those a batch names. Verifications refer to their
/// service without a foreign key (migration 0006): this is what makes a start on an
/// unknown service fail. Services are never deleted, so one found once exists for good:
/// only the ids not found before are read.
#[derive(Default)]
pub(super) struct KnownServices(std::sync::RwLock<HashSet<String>>);

impl KnownServices {
    async fn existing<'a>(
        &self,
        conn: &mut PgConnection,
        ids: &[&'a str],
    ) -> StoreResult<HashSet<&'a str>> {
        let unseen: Vec<&str> = {
            let seen = self.0.read().unwrap_or_else(|e| e.into_inner());
            ids.iter()
                .copied()
                .filter(|id| !seen.contains(*id))
                .collect()
        };
        if !unseen.is_empty() {
            let found: Vec<String> =
                sqlx::query_scalar("SELECT id FROM services WHERE id = ANY($1)")
                    .bind(&unseen)
                    .fetch_all(&mut *conn)
                    .await?;
            self.0
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend(found);
        }
        let seen = self.0.read().unwrap_or_else(|e| e.into_inner());
        Ok(ids
            .iter()
            .copied()
            .filter(|id| seen.contains(*id))
            .collect())
    }
}

/// Locks, in id order, the pending verifications of the numbers the slow path handles:
/// the order in which check batches lock them, so that the two never deadlock.
async fn lock_pending(tx: &mut Transaction<'_, Postgres>, numbers: &[[u8; 32]]) -> StoreResult<()> {
    let bis: Vec<&[u8]> = numbers.iter().map(|b| &b[..]).collect();
    sqlx::query(
        "SELECT v.id FROM verifications v JOIN subjects s ON s.id = v.subject_id
         WHERE s.blind_index = ANY($1) AND v.status = 'pending' ORDER BY v.id FOR UPDATE OF v",
    )
    .bind(&bis)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One start through the one-at-a-time path, in a savepoint: its error rolls back its
/// own writes and is its answer; an error of the savepoint itself is the batch's.
async fn one_by_one(
    tx: &mut Transaction<'_, Postgres>,
    codes: &CodeHasher,
    cmd: StartCmd,
) -> StoreResult<StoreResult<StartOutcome>> {
    sqlx::query("SAVEPOINT one_start")
        .execute(&mut **tx)
        .await?;
    match start(tx, codes, cmd).await {
        Ok(out) => {
            sqlx::query("RELEASE SAVEPOINT one_start")
                .execute(&mut **tx)
                .await?;
            Ok(Ok(out))
        }
        Err(e) => {
            sqlx::query("ROLLBACK TO SAVEPOINT one_start")
                .execute(&mut **tx)
                .await?;
            sqlx::query("RELEASE SAVEPOINT one_start")
                .execute(&mut **tx)
                .await?;
            Ok(Err(e))
        }
    }
}

/// A start that may take the fast path, borrowed from its command.
struct FreshStart<'a> {
    /// The command's position in the batch.
    pos: usize,
    blind_index: &'a [u8],
    subject: &'a NewSubject,
    sealed: &'a Sealed,
    /// The verification it creates if the number is new (`subject_id` still unset).
    row: VerificationRow,
    code_hash: [u8; 32],
    lockout_ms: i64,
    /// Set when the message is queued claimed by the caller (`StartCmd::claim_for_ms`).
    lease_until: Option<i64>,
    prefix: Option<&'a str>,
}

/// The first start of each number of the batch, among those without an
/// Idempotency-Key and on a service that exists (`unknown` is false), in the order of
/// their blind index.
fn fresh_starts<'a>(
    codes: &CodeHasher,
    cmds: &'a [StartCmd],
    unknown: &[bool],
) -> Vec<FreshStart<'a>> {
    let mut seen = HashSet::new();
    let mut firsts: Vec<(usize, &StartCmd)> = cmds
        .iter()
        .enumerate()
        .filter(|&(i, c)| !unknown[i] && c.idempotency.is_none() && seen.insert(c.blind_index.0))
        .collect();
    firsts.sort_unstable_by_key(|(_, c)| c.blind_index.0);
    firsts
        .into_iter()
        .map(|(pos, c)| {
            let expires_at = c.now + i64::from(c.config.ttl_seconds) * 1000;
            FreshStart {
                pos,
                blind_index: &c.blind_index.0,
                subject: &c.new_subject,
                sealed: &c.sealed,
                row: VerificationRow::pending(
                    NewVerification {
                        id: c.id_if_new.clone(),
                        service_id: c.service_id.clone(),
                        subject_id: 0,
                        channel: c.channel,
                        locale: c.locale.clone(),
                        account_ref: c.account_ref.clone(),
                        purpose: c.purpose.clone(),
                        test_number: c.sealed.message.is_none(),
                    },
                    &c.config,
                    c.now,
                    expires_at,
                ),
                code_hash: codes.hash(&c.id_if_new, c.code.expose()),
                lockout_ms: i64::from(c.config.lockout_seconds) * 1000,
                lease_until: c.claim_for_ms.map(|ms| c.now + ms),
                prefix: c.prefix.as_deref(),
            }
        })
        .collect()
}

/// Inserts the subjects of the fresh starts' numbers, and for each subject that is
/// new, its verification and its message, in one statement that commits by itself
/// (one round trip whatever the batch's size; `unnest` yields the rows, and so inserts
/// the subjects, in the order of `fresh`). Returns the new verifications (and the id
/// of their message when it was queued claimed) by their command's position; the
/// other commands, whose number was already known, are left for the slow path.
async fn fast_path(
    conn: &mut PgConnection,
    fresh: Vec<FreshStart<'_>>,
) -> StoreResult<HashMap<usize, (VerificationRow, Option<i64>)>> {
    if fresh.is_empty() {
        return Ok(HashMap::new());
    }
    let mut cols = Columns::default();
    for f in &fresh {
        cols.push(f);
    }
    // `s` inserts the subjects that are new (the others conflict and return nothing);
    // `v` a verification for each of those, which is why it joins `s`; `o` the message
    // of each, unless for a test number (no payload). The data-modifying parts see one
    // another only through what they return, which is all they need: the blind index
    // of the batch's fresh starts is unique, so every join is one to one.
    let created = sqlx::query(
        "WITH t AS (
            SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::int4[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::bytea[], $11::text[], $12::text[],
                                 $13::text[], $14::bytea[], $15::int4[], $16::int4[], $17::int8[], $18::bool[],
                                 $19::int8[], $20::int8[], $21::bytea[], $22::int8[], $23::text[])
                AS t(blind_index, wrapped_key, phone_ct, country_code, region, number_type,
                     id, service_id, channel, code_hash, locale, account_ref, purpose, signals_ct,
                     max_sends, max_attempts, lockout_ms, test_number, now, expires_at, payload, lease_until, prefix)
         ), s AS (
            INSERT INTO subjects (blind_index, wrapped_key, phone_ct, country_code, region, number_type, created_at)
            SELECT blind_index, wrapped_key, phone_ct, country_code, region, number_type, now FROM t
            ON CONFLICT (blind_index) DO NOTHING
            RETURNING id, blind_index
         ), v AS (
            INSERT INTO verifications (id, service_id, subject_id, status, channel, code_hash, locale, account_ref,
                    purpose, signals_ct, sends, max_sends, attempts, max_attempts, lockout_ms, test_number, created_at,
                    updated_at, expires_at, last_sent_at, prefix)
            SELECT t.id, t.service_id, s.id, 'pending', t.channel, t.code_hash, t.locale, t.account_ref, t.purpose,
                   t.signals_ct, 1, t.max_sends, 0, t.max_attempts, t.lockout_ms, t.test_number, t.now, t.now,
                   t.expires_at, t.now, t.prefix
            FROM t JOIN s ON s.blind_index = t.blind_index
            RETURNING id, subject_id
         ), o AS (
            INSERT INTO outbox (verification_id, subject_id, channel, payload, status, attempts, next_attempt_at,
                                lease_until, not_after, created_at, updated_at)
            SELECT t.id, v.subject_id, t.channel, t.payload,
                   CASE WHEN t.lease_until IS NULL THEN 'queued' ELSE 'sending' END,
                   CASE WHEN t.lease_until IS NULL THEN 0 ELSE 1 END,
                   t.now, t.lease_until, t.expires_at, t.now, t.now
            FROM t JOIN v ON v.id = t.id WHERE t.payload IS NOT NULL
            RETURNING verification_id, id
         )
         SELECT v.id, v.subject_id, o.id FROM v LEFT JOIN o ON o.verification_id = v.id",
    )
    .bind(&cols.blind_index)
    .bind(&cols.wrapped_key)
    .bind(&cols.phone_ct)
    .bind(&cols.country_code)
    .bind(&cols.region)
    .bind(&cols.number_type)
    .bind(&cols.id)
    .bind(&cols.service_id)
    .bind(&cols.channel)
    .bind(&cols.code_hash)
    .bind(&cols.locale)
    .bind(&cols.account_ref)
    .bind(&cols.purpose)
    .bind(&cols.signals_ct)
    .bind(&cols.max_sends)
    .bind(&cols.max_attempts)
    .bind(&cols.lockout_ms)
    .bind(&cols.test_number)
    .bind(&cols.now)
    .bind(&cols.expires_at)
    .bind(&cols.payload)
    .bind(&cols.lease_until)
    .bind(&cols.prefix)
    .fetch_all(&mut *conn)
    .await?;

    // The verification ids are the commands' own: each row finds its start by its id.
    let mut created: HashMap<String, (i64, Option<i64>)> = created
        .iter()
        .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
        .collect::<Result<_, sqlx::Error>>()?;
    let mut out = HashMap::with_capacity(created.len());
    for mut f in fresh {
        if let Some((subject_id, message)) = created.remove(&f.row.id) {
            f.row.subject_id = subject_id;
            // A message is reported only when the caller claimed it.
            out.insert(f.pos, (f.row, f.lease_until.and(message)));
        }
    }
    Ok(out)
}

/// The fresh starts, column by column, for `unnest`.
#[derive(Default)]
struct Columns<'a> {
    blind_index: Vec<&'a [u8]>,
    wrapped_key: Vec<&'a [u8]>,
    phone_ct: Vec<&'a [u8]>,
    country_code: Vec<i32>,
    region: Vec<Option<&'a str>>,
    number_type: Vec<&'static str>,
    id: Vec<&'a str>,
    service_id: Vec<&'a str>,
    channel: Vec<&'static str>,
    code_hash: Vec<&'a [u8]>,
    locale: Vec<Option<&'a str>>,
    account_ref: Vec<Option<&'a str>>,
    purpose: Vec<Option<&'a str>>,
    signals_ct: Vec<Option<&'a [u8]>>,
    max_sends: Vec<i32>,
    max_attempts: Vec<i32>,
    lockout_ms: Vec<i64>,
    test_number: Vec<bool>,
    now: Vec<i64>,
    expires_at: Vec<i64>,
    payload: Vec<Option<&'a [u8]>>,
    lease_until: Vec<Option<i64>>,
    prefix: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, f: &'a FreshStart<'a>) {
        let r = &f.row;
        self.blind_index.push(f.blind_index);
        self.wrapped_key.push(&f.subject.wrapped_key);
        self.phone_ct.push(&f.subject.phone_ct);
        self.country_code.push(i32::from(f.subject.country_code));
        self.region.push(f.subject.region.as_deref());
        self.number_type.push(f.subject.number_type);
        self.id.push(&r.id);
        self.service_id.push(&r.service_id);
        self.channel.push(r.channel.as_str());
        self.code_hash.push(&f.code_hash);
        self.locale.push(r.locale.as_deref());
        self.account_ref.push(r.account_ref.as_deref());
        self.purpose.push(r.purpose.as_deref());
        self.signals_ct.push(f.sealed.signals_ct.as_deref());
        self.max_sends.push(r.max_sends as i32);
        self.max_attempts.push(r.max_attempts as i32);
        self.lockout_ms.push(f.lockout_ms);
        self.test_number.push(r.test_number);
        self.now.push(r.created_at);
        self.expires_at.push(r.expires_at);
        self.payload.push(f.sealed.message.as_deref());
        self.lease_until.push(f.lease_until);
        self.prefix.push(f.prefix);
    }
}
