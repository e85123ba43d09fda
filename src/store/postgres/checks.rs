//! Checks, applied a batch at a time (see `batch.rs`).
//!
//! A check by number names no verification: the batch first finds the pending
//! verification of each such check's number and service, in one statement for them
//! all (only when the batch has some), as a look-up before the check would.
//!
//! A check batch holds no transaction open across round trips: one statement reads
//! every verification the batch checks, with its subject and the guess budget of its
//! number on its service (`guess_budgets`), and each check is decided by the pure
//! `verify::plan_check` against the state the checks before it left: of several checks
//! of one verification in a batch, the second sees the first's approval or wrong
//! attempt exactly as it would after the first's commit. A check whose code counts
//! (right, or a wrong attempt) meets the budget once the code is compared, at the rate
//! its gate names ([`CheckGate::budget`]): a wrong code spends a unit if one is left, a
//! right one needs one left and spends none, and the gate hears what was found
//! ([`CheckGate::judged`]). One more statement, which commits by itself, writes every
//! change (verifications, budgets, lockouts, the messages of verifications that ended),
//! each verification and what goes with it only if the verification is still as it
//! was read: its status, attempts, expiry and code. A verification that another writer
//! changed in between (a check on another instance, a re-send's new code) is not
//! written, and its checks are decided again on what that writer left, up to [`TRIES`]
//! times. A last statement, only when needed, reads the lockouts that refusals report.
//!
//! Why that keeps the budget exact: every check that counts a code writes its
//! verification, and a number has at most one pending verification per service, so two
//! counting checks of one number on one service write the same row, and the second to
//! write is decided again on the budget the first left. Two round trips a batch, no row
//! held locked between them, and no counters: docs/BENCHMARKS.md.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::{PgConnection, Row};

use super::batch::KeptConnections;
use super::{subject_from, verification_from, SUBJECT_COLUMNS, VERIFICATION_COLUMNS};
use crate::clock::Millis;
use crate::counters::gcra_step;
use crate::crypto::{BlindIndex, CodeHasher};
use crate::store::{
    CheckGate, CheckOutcome, Checked, StoreError, StoreResult, SubjectSecrets, VerificationRow,
};
use crate::verify::{self, CheckPlan, CheckState, OtpCode, Status, VerifyError};

/// Which verification a check is of.
pub(super) enum Target {
    Id(String),
    /// The pending verification of a number on a service (a check by number), found
    /// by the batch.
    Pending {
        bi: BlindIndex,
        service_id: String,
    },
}

/// One check of a code.
pub(super) struct CheckReq {
    pub target: Target,
    pub code: OtpCode,
    pub now: Millis,
    /// Asked before the code is compared (see [`CheckGate`]).
    pub gate: Option<Arc<dyn CheckGate>>,
}

/// What a verification's write requires of it: the fields its checks were decided on,
/// as read.
struct Read {
    status: &'static str,
    attempts: i32,
    expires_at: Millis,
    code_hash: Option<Vec<u8>>,
}

/// A verification as the checks of the batch so far left it.
struct Current {
    row: VerificationRow,
    read: Read,
    subject: SubjectSecrets,
    code_hash: Option<Vec<u8>>,
    lockout_ms: i64,
    /// The number's guess budget on the service (a GCRA TAT, µs), as the checks so far
    /// left it; `None`: whole.
    budget: Option<i64>,
    /// Whether a wrong code of this batch spent from it.
    budget_spent: bool,
    changed: bool,
    /// Its queued messages end with this status, at this time.
    end_messages: Option<(&'static str, Millis)>,
}

impl Current {
    fn checked(&self) -> Checked {
        Checked {
            row: self.row.clone(),
            subject: self.subject.clone(),
        }
    }
}

/// How many times a batch decides a check whose verification changed between its read
/// and its write before it gives up on it (`Unavailable`, retryable). Each time another
/// writer won: a check that keeps losing is one of a crowd on one verification.
const TRIES: usize = 8;

/// Applies a batch of checks; see the module's comment.
pub(super) async fn run(
    conns: &KeptConnections,
    codes: &CodeHasher,
    reqs: Vec<CheckReq>,
) -> StoreResult<Vec<StoreResult<CheckOutcome>>> {
    let mut conn = conns.take().await?;
    let mut outs: Vec<Option<StoreResult<CheckOutcome>>> = (0..reqs.len()).map(|_| None).collect();
    for _ in 0..TRIES {
        if outs.iter().all(Option::is_some) {
            break;
        }
        // On an error the connection is dropped: the pool tests it on its way back.
        decide(&mut conn, codes, &reqs, &mut outs).await?;
    }
    conns.keep(conn);
    Ok(outs
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "the verification kept changing while it was checked".into(),
                ))
            })
        })
        .collect())
}

/// One try at the checks of the batch still undecided (`outs[i]` is `None`): reads
/// their verifications, decides each check, and writes every change in one statement
/// that applies to a verification only if it is still as read. Checks of a verification
/// that changed meanwhile stay undecided, for the next try.
async fn decide(
    conn: &mut PgConnection,
    codes: &CodeHasher,
    reqs: &[CheckReq],
    outs: &mut [Option<StoreResult<CheckOutcome>>],
) -> StoreResult<()> {
    let todo: Vec<bool> = outs.iter().map(Option::is_none).collect();
    let found = find_pending(conn, reqs, &todo).await?;
    // Each undecided check's verification; `None`: a check by number that found none.
    let id_of: Vec<Option<&str>> = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| match &r.target {
            _ if !todo[i] => None,
            Target::Id(id) => Some(id.as_str()),
            Target::Pending { .. } => found.get(&i).map(String::as_str),
        })
        .collect();
    let mut ids: Vec<&str> = id_of.iter().flatten().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query(&format!(
        "SELECT {VERIFICATION_COLUMNS}, {SUBJECT_COLUMNS}, v.code_hash, v.lockout_ms, g.tat_us
         FROM verifications v JOIN subjects s ON s.id = v.subject_id
         LEFT JOIN guess_budgets g ON g.subject_id = v.subject_id AND g.service_id = v.service_id
         WHERE v.id = ANY($1)"
    ))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;

    let mut current: HashMap<String, Current> = HashMap::with_capacity(rows.len());
    // Lockouts by (subject, service) that this try raises, with the verification whose
    // write raises them.
    let mut raised: HashMap<(i64, String), (String, Millis)> = HashMap::new();
    // Refusals of verifications whose attempts were used up earlier: they report the
    // lockout, read once this try's own are written.
    let mut locked_out: Vec<(usize, (i64, String), Checked, Millis)> = Vec::new();
    for r in &rows {
        let row = verification_from(r)?;
        let code_hash: Option<Vec<u8>> = r.try_get(21)?;
        current.insert(
            row.id.clone(),
            Current {
                subject: subject_from(r, 17)?,
                read: Read {
                    status: row.status.as_str(),
                    attempts: row.attempts as i32,
                    expires_at: row.expires_at,
                    code_hash: code_hash.clone(),
                },
                code_hash,
                lockout_ms: r.try_get(22)?,
                budget: r.try_get(23)?,
                budget_spent: false,
                row,
                changed: false,
                end_messages: None,
            },
        );
    }

    // Checks of one verification are decided one after another, each on what the one
    // before it left; a round decides the next check of every verification at once and
    // asks the gates of its checks together. Almost always one round.
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(reqs.len());
    let round_of: Vec<Option<usize>> = id_of
        .iter()
        .map(|id| {
            id.map(|id| {
                let n = seen.entry(id).or_default();
                *n += 1;
                *n - 1
            })
        })
        .collect();
    let rounds = seen.values().copied().max().unwrap_or(0);
    for (i, id) in id_of.iter().enumerate() {
        if todo[i] && id.is_none_or(|id| !current.contains_key(id)) {
            outs[i] = Some(Ok(CheckOutcome::NotFound));
        }
    }
    for round in 0..rounds {
        let (mut planned, mut gates) = (Vec::new(), Vec::new());
        for (i, req) in reqs.iter().enumerate() {
            if round_of[i] != Some(round) {
                continue;
            }
            let Some((id, cur)) = id_of[i].and_then(|id| Some((id, current.get(id)?))) else {
                continue;
            };
            let right = cur
                .code_hash
                .as_deref()
                .is_some_and(|h| codes.matches(id, req.code.expose(), h));
            let state = CheckState {
                status: cur.row.status,
                expires_at: cur.row.expires_at,
                attempts: cur.row.attempts,
                max_attempts: cur.row.max_attempts,
                lockout_seconds: u32::try_from(cur.lockout_ms / 1000).unwrap_or(u32::MAX),
            };
            let plan = verify::plan_check(&state, right, req.now);
            // A plan that counts the code meets the number's budget, once the code is
            // compared.
            let gate = match (&req.gate, &plan) {
                (
                    Some(gate),
                    Ok(CheckPlan::Approve | CheckPlan::Wrong { .. } | CheckPlan::Exhausted { .. }),
                ) => Some((gate, cur.row.service_id.clone())),
                _ => None,
            };
            planned.push((i, plan, right));
            gates.push(gate);
        }
        let rates = futures_util::future::join_all(gates.iter().map(|g| async move {
            match g {
                Some((gate, service_id)) => gate.budget(service_id).await,
                None => None,
            }
        }))
        .await;
        for (((i, plan, right), gate), rate) in planned.into_iter().zip(gates).zip(rates) {
            let req = &reqs[i];
            let Some(cur) = id_of[i].and_then(|id| current.get_mut(id)) else {
                continue;
            };
            let admitted = match (gate, rate) {
                (Some((gate, service_id)), Some(rate)) => {
                    // A right code needs a unit left and spends none; a wrong one spends
                    // one if one is left.
                    let (found, tat) = gcra_step(cur.budget, rate, req.now, 1);
                    let admitted =
                        gate.judged(&cur.subject.blind_index, &service_id, right, &found);
                    if let (true, false, Some(tat)) = (admitted, right, tat) {
                        cur.budget = Some(tat);
                        cur.budget_spent = true;
                    }
                    admitted
                }
                _ => true,
            };
            outs[i] = Some(Ok(if admitted {
                apply(cur, plan, req.now, i, &mut raised, &mut locked_out)
            } else {
                CheckOutcome::Gated
            }));
        }
    }

    let changed: Vec<&Current> = current.values().filter(|c| c.changed).collect();
    if !changed.is_empty() {
        let written = write(conn, &changed, &raised).await?;
        // A verification that changed since it was read: its checks are decided again.
        let lost: Vec<&str> = changed
            .iter()
            .map(|c| c.row.id.as_str())
            .filter(|id| !written.contains(*id))
            .collect();
        if !lost.is_empty() {
            for (i, id) in id_of.iter().enumerate() {
                if id.is_some_and(|id| lost.contains(&id)) {
                    outs[i] = None;
                }
            }
            locked_out.retain(|(i, ..)| outs[*i].is_some());
        }
    }
    if !locked_out.is_empty() {
        // Read after this try's lockouts are written: a lockout committed by the check
        // that used up the last attempt is seen, as a check of its own would see it.
        let (subjects, services): (Vec<i64>, Vec<&str>) = locked_out
            .iter()
            .map(|(_, (subject, service), _, _)| (*subject, service.as_str()))
            .unzip();
        let rows = sqlx::query(
            "SELECT l.subject_id, l.service_id, l.until FROM lockouts l
             JOIN unnest($1::int8[], $2::text[]) AS k(subject_id, service_id)
               ON l.subject_id = k.subject_id AND l.service_id = k.service_id",
        )
        .bind(&subjects)
        .bind(&services)
        .fetch_all(&mut *conn)
        .await?;
        let mut until: HashMap<(i64, String), Millis> = HashMap::with_capacity(rows.len());
        for r in &rows {
            until.insert((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?);
        }
        for (i, key, v, now) in locked_out {
            let why = VerifyError::MaxAttemptsReached {
                retry_after_ms: until.get(&key).map_or(0, |u| (u - now).max(0)),
            };
            outs[i] = Some(Ok(CheckOutcome::Refused { v, why }));
        }
    }
    Ok(())
}

/// Writes the changes of `changed`, each only if its verification is still as it was
/// read, with the lockouts and the ends of the queued messages that go with them, in one
/// statement that commits by itself. Returns the ids of the verifications written.
async fn write(
    conn: &mut PgConnection,
    changed: &[&Current],
    raised: &HashMap<(i64, String), (String, Millis)>,
) -> StoreResult<HashSet<String>> {
    let (mut id, mut status, mut attempts, mut approved_at, mut updated_at, mut clear_hash) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut was_status, mut was_attempts, mut was_expires_at, mut was_hash) =
        (vec![], vec![], vec![], vec![]);
    let (mut ended, mut end_status, mut ended_at) = (vec![], vec![], vec![]);
    for c in changed {
        id.push(c.row.id.as_str());
        status.push(c.row.status.as_str());
        attempts.push(c.row.attempts as i32);
        approved_at.push(c.row.approved_at);
        updated_at.push(c.row.updated_at);
        clear_hash.push(c.code_hash.is_none());
        was_status.push(c.read.status);
        was_attempts.push(c.read.attempts);
        was_expires_at.push(c.read.expires_at);
        was_hash.push(c.read.code_hash.as_deref());
        if let Some((s, at)) = c.end_messages {
            ended.push(c.row.id.as_str());
            end_status.push(s);
            ended_at.push(at);
        }
    }
    let (mut b_verification, mut b_subject, mut b_service, mut b_tat) =
        (vec![], vec![], vec![], vec![]);
    for c in changed.iter().filter(|c| c.budget_spent) {
        b_verification.push(c.row.id.as_str());
        b_subject.push(c.row.subject_id);
        b_service.push(c.row.service_id.as_str());
        b_tat.push(c.budget);
    }
    let (mut l_verification, mut l_subject, mut l_service, mut l_until) =
        (vec![], vec![], vec![], vec![]);
    for ((subject, service), (verification, until)) in raised {
        l_verification.push(verification.as_str());
        l_subject.push(*subject);
        l_service.push(service.as_str());
        l_until.push(*until);
    }
    // Every part runs to completion whether or not the others read it; the lockouts and
    // the messages follow only the verifications written.
    let rows = sqlx::query(
        "WITH locked_rows AS MATERIALIZED (
            -- Locked in id order, the order of every batch that locks several
            -- verifications: no two wait on each other in a cycle.
            SELECT id FROM verifications WHERE id = ANY($1) ORDER BY id FOR UPDATE
         ), changed AS (
            UPDATE verifications v SET status = c.status, attempts = c.attempts, approved_at = c.approved_at,
                   updated_at = c.updated_at, code_hash = CASE WHEN c.clear_hash THEN NULL ELSE v.code_hash END
            FROM unnest($1::text[], $2::text[], $3::int4[], $4::int8[], $5::int8[], $6::bool[],
                        $13::text[], $14::int4[], $15::int8[], $16::bytea[])
                 AS c(id, status, attempts, approved_at, updated_at, clear_hash,
                      was_status, was_attempts, was_expires_at, was_hash)
                 JOIN locked_rows USING (id)
            -- As read: a check decided on what another writer changed meanwhile
            -- (another check, a re-send's new code) is decided again.
            WHERE v.id = c.id AND v.status = c.was_status AND v.attempts = c.was_attempts
              AND v.expires_at = c.was_expires_at AND v.code_hash IS NOT DISTINCT FROM c.was_hash
            RETURNING v.id
         ), locked AS (
            INSERT INTO lockouts (subject_id, service_id, until)
            SELECT l.subject_id, l.service_id, l.until
            FROM unnest($17::text[], $7::int8[], $8::text[], $9::int8[])
                 AS l(verification_id, subject_id, service_id, until)
            JOIN changed ON changed.id = l.verification_id
            ON CONFLICT (subject_id, service_id) DO UPDATE SET until = GREATEST(lockouts.until, excluded.until)
         ), budgets AS (
            -- Written only with its verification: no other code of this number on
            -- this service counted since the budget was read.
            INSERT INTO guess_budgets (subject_id, service_id, tat_us)
            SELECT b.subject_id, b.service_id, b.tat_us
            FROM unnest($18::text[], $19::int8[], $20::text[], $21::int8[])
                 AS b(verification_id, subject_id, service_id, tat_us)
            JOIN changed ON changed.id = b.verification_id
            ON CONFLICT (subject_id, service_id) DO UPDATE SET tat_us = excluded.tat_us
         ), ending AS MATERIALIZED (
            -- One index scan for the batch's verifications. Joined to the
            -- outbox directly, the planner chose a sequential scan (~50 ms per
            -- batch with 100k messages) or, without statistics (a table not yet
            -- analysed), an index scan per verification that searched for every
            -- verification of the batch each time: n² look-ups. The status test
            -- is not written as `IN ('queued', 'sending', 'retry')`: that is the
            -- predicate of the partial index `outbox_due`, which the planner would
            -- AND in, scanning its dead entries.
            SELECT id, verification_id FROM outbox
            WHERE verification_id = ANY($10) AND status NOT IN ('sent', 'failed', 'expired', 'canceled')
         ), ends AS (
            UPDATE outbox o SET status = e.status, payload = NULL, lease_until = NULL, updated_at = e.at
            FROM ending t JOIN unnest($10::text[], $11::text[], $12::int8[]) AS e(verification_id, status, at)
                 ON e.verification_id = t.verification_id
                 JOIN changed ON changed.id = t.verification_id
            -- Tested again on the row as updated: a message sent meanwhile stays sent.
            WHERE o.id = t.id AND o.status NOT IN ('sent', 'failed', 'expired', 'canceled')
         )
         SELECT id FROM changed",
    )
    .bind(&id)
    .bind(&status)
    .bind(&attempts)
    .bind(&approved_at)
    .bind(&updated_at)
    .bind(&clear_hash)
    .bind(&l_subject)
    .bind(&l_service)
    .bind(&l_until)
    .bind(&ended)
    .bind(&end_status)
    .bind(&ended_at)
    .bind(&was_status)
    .bind(&was_attempts)
    .bind(&was_expires_at)
    .bind(&was_hash)
    .bind(&l_verification)
    .bind(&b_verification)
    .bind(&b_subject)
    .bind(&b_service)
    .bind(&b_tat)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(StoreError::from))
        .collect()
}

/// Applies one check's plan to its verification as the batch has left it, and returns
/// the check's outcome (a placeholder for a refusal of used-up attempts, whose lockout
/// is read once the batch's own are written: see `locked_out`).
fn apply(
    cur: &mut Current,
    plan: Result<CheckPlan, VerifyError>,
    now: Millis,
    i: usize,
    raised: &mut HashMap<(i64, String), (String, Millis)>,
    locked_out: &mut Vec<(usize, (i64, String), Checked, Millis)>,
) -> CheckOutcome {
    let lockout_key = (cur.row.subject_id, cur.row.service_id.clone());
    match plan {
        Err(VerifyError::MaxAttemptsReached { .. }) => {
            locked_out.push((i, lockout_key, cur.checked(), now));
            CheckOutcome::NotFound
        }
        Err(why) => CheckOutcome::Refused {
            v: cur.checked(),
            why,
        },
        Ok(CheckPlan::Approve) => {
            cur.row = cur.row.clone().approved(now);
            cur.code_hash = None;
            cur.changed = true;
            cur.end_messages = Some(("canceled", now));
            CheckOutcome::Approved(cur.checked())
        }
        Ok(plan @ (CheckPlan::Wrong { .. } | CheckPlan::Exhausted { .. })) => {
            cur.row.attempts += 1;
            cur.row.updated_at = now;
            if cur.row.attempts >= cur.row.max_attempts {
                cur.row.status = Status::MaxAttemptsReached;
                cur.code_hash = None;
            }
            cur.changed = true;
            if let CheckPlan::Exhausted { locked_until } = plan {
                let (_, u) = raised
                    .entry(lockout_key)
                    .or_insert_with(|| (cur.row.id.clone(), locked_until));
                *u = (*u).max(locked_until);
                cur.end_messages = Some(("canceled", now));
                CheckOutcome::Refused {
                    v: cur.checked(),
                    why: VerifyError::MaxAttemptsReached {
                        retry_after_ms: locked_until - now,
                    },
                }
            } else {
                CheckOutcome::Wrong {
                    v: cur.checked(),
                    attempts_left: cur.row.max_attempts.saturating_sub(cur.row.attempts),
                }
            }
        }
        Ok(CheckPlan::Expire) => {
            cur.row.status = Status::Expired;
            cur.row.updated_at = now;
            cur.code_hash = None;
            cur.changed = true;
            cur.end_messages = Some(("expired", now));
            CheckOutcome::Refused {
                v: cur.checked(),
                why: VerifyError::Expired,
            }
        }
    }
}

/// The pending verifications that the batch's checks by number are of, by the check's
/// index: one statement, only when the batch has such checks. Read before the rows are
/// locked, as a look-up before the check would: a verification that stops being
/// pending meanwhile is refused by its check.
async fn find_pending(
    conn: &mut PgConnection,
    reqs: &[CheckReq],
    todo: &[bool],
) -> StoreResult<HashMap<usize, String>> {
    let (mut index, mut bis, mut services, mut nows) = (vec![], vec![], vec![], vec![]);
    for (i, req) in reqs.iter().enumerate() {
        if let (true, Target::Pending { bi, service_id }) = (todo[i], &req.target) {
            index.push(i);
            bis.push(&bi.0[..]);
            services.push(service_id.as_str());
            nows.push(req.now);
        }
    }
    if index.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT k.n, v.id FROM unnest($1::bytea[], $2::text[], $3::int8[])
             WITH ORDINALITY AS k(blind_index, service_id, now, n)
         JOIN subjects s ON s.blind_index = k.blind_index
         JOIN verifications v ON v.subject_id = s.id AND v.service_id = k.service_id
          AND v.status = 'pending' AND v.expires_at > k.now",
    )
    .bind(&bis)
    .bind(&services)
    .bind(&nows)
    .fetch_all(&mut *conn)
    .await?;
    let mut found = HashMap::with_capacity(rows.len());
    for r in &rows {
        let n: i64 = r.try_get(0)?;
        let i = usize::try_from(n - 1)
            .ok()
            .and_then(|n| index.get(n))
            .ok_or_else(|| StoreError::Internal("a pending verification for no check".into()))?;
        found.insert(*i, r.try_get(1)?);
    }
    Ok(found)
}
