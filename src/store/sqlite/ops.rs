//! The SQLite statements of each store operation. Functions taking a connection from
//! the writer run inside the writer's transaction (and their own savepoint); the others
//! run on a read-only connection.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::clock::Millis;
use crate::crypto::{BlindIndex, CodeHasher};
use crate::store::*;
use crate::verify::{self, CheckPlan, CheckState, PendingState, StartPlan};

fn internal(msg: impl Into<String>) -> StoreError {
    StoreError::Internal(msg.into())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

// ---------------------------------------------------------------- API keys

pub fn create_api_key(c: &Connection, k: &ApiKeyRecord) -> StoreResult<()> {
    let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
    c.prepare_cached(
        "INSERT INTO api_keys (id, name, secret_hash, scopes, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![k.id, k.name, k.secret_hash, scopes.join(","), k.created_at, k.revoked_at])?;
    Ok(())
}

fn api_key_from(r: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let scopes: String = r.get(3)?;
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        secret_hash: r.get(2)?,
        scopes: scopes.split(',').filter_map(Scope::parse).collect(),
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

pub fn get_api_key(c: &Connection, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
    Ok(c.prepare_cached(
        "SELECT id, name, secret_hash, scopes, created_at, revoked_at FROM api_keys WHERE id = ?1",
    )?
    .query_row([id], api_key_from)
    .optional()?)
}

pub fn list_api_keys(c: &Connection) -> StoreResult<Vec<ApiKeyRecord>> {
    Ok(c
        .prepare_cached("SELECT id, name, secret_hash, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at, id")?
        .query_map([], api_key_from)?
        .collect::<Result<Vec<_>, _>>()?)
}

pub fn revoke_api_key(c: &Connection, id: &str, now: Millis) -> StoreResult<bool> {
    let n = c
        .prepare_cached("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")?
        .execute(params![id, now])?;
    Ok(n == 1)
}

// ---------------------------------------------------------------- services

fn service_from_row(r: &Row<'_>) -> rusqlite::Result<(String, String, Millis, Millis)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn service_record(
    (id, json, created_at, updated_at): (String, String, Millis, Millis),
) -> StoreResult<ServiceRecord> {
    let config: ServiceConfig = serde_json::from_str(&json)
        .map_err(|e| internal(format!("service {id} has unreadable config: {e}")))?;
    Ok(ServiceRecord {
        id,
        config: Arc::new(config),
        created_at,
        updated_at,
    })
}

pub fn create_service(c: &Connection, s: &ServiceRecord) -> StoreResult<()> {
    let json = serde_json::to_string(&*s.config).map_err(|e| internal(e.to_string()))?;
    c.prepare_cached("INSERT INTO services (id, name, config, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![s.id, s.config.name, json, s.created_at, s.updated_at])
        .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict("service_name") } else { e.into() })?;
    Ok(())
}

pub fn get_service(c: &Connection, key: &str) -> StoreResult<Option<ServiceRecord>> {
    c.prepare_cached(
        "SELECT id, config, created_at, updated_at FROM services WHERE id = ?1 OR name = ?1",
    )?
    .query_row([key], service_from_row)
    .optional()?
    .map(service_record)
    .transpose()
}

pub fn list_services(c: &Connection) -> StoreResult<Vec<ServiceRecord>> {
    let rows = c
        .prepare_cached(
            "SELECT id, config, created_at, updated_at FROM services ORDER BY created_at, id",
        )?
        .query_map([], service_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(service_record).collect()
}

pub fn update_service(
    c: &Connection,
    id: &str,
    cfg: &ServiceConfig,
    now: Millis,
) -> StoreResult<Option<ServiceRecord>> {
    let json = serde_json::to_string(cfg).map_err(|e| internal(e.to_string()))?;
    let n = c
        .prepare_cached(
            "UPDATE services SET name = ?2, config = ?3, updated_at = ?4 WHERE id = ?1",
        )?
        .execute(params![id, cfg.name, json, now])
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict("service_name")
            } else {
                StoreError::from(e)
            }
        })?;
    if n == 0 {
        return Ok(None);
    }
    get_service(c, id)
}

// ---------------------------------------------------------------- subjects

fn subject_from(r: &Row<'_>, at: usize) -> rusqlite::Result<SubjectSecrets> {
    let bi: Vec<u8> = r.get(at + 1)?;
    Ok(SubjectSecrets {
        id: r.get(at)?,
        blind_index: BlindIndex::from_slice(&bi).unwrap_or(BlindIndex([0; 32])),
        wrapped_key: r.get(at + 2)?,
        phone_ct: r.get(at + 3)?,
    })
}

fn find_subject(c: &Connection, bi: &BlindIndex) -> StoreResult<Option<SubjectSecrets>> {
    Ok(c.prepare_cached(
        "SELECT id, blind_index, wrapped_key, phone_ct FROM subjects WHERE blind_index = ?1",
    )?
    .query_row([&bi.0[..]], |r| subject_from(r, 0))
    .optional()?)
}

// ---------------------------------------------------------------- verifications

const VERIFICATION_COLUMNS: &str = "v.id, v.service_id, v.subject_id, v.status, v.channel, v.locale, v.account_ref, \
     v.purpose, v.sends, v.max_sends, v.attempts, v.max_attempts, v.test_number, v.created_at, v.updated_at, \
     v.expires_at, v.approved_at";

fn verification_from(r: &Row<'_>) -> rusqlite::Result<VerificationRow> {
    let status: String = r.get(3)?;
    let channel: String = r.get(4)?;
    Ok(VerificationRow {
        id: r.get(0)?,
        service_id: r.get(1)?,
        subject_id: r.get(2)?,
        status: verify::Status::parse(&status).unwrap_or(verify::Status::Failed),
        channel: verify::Channel::parse(&channel).unwrap_or(verify::Channel::Sms),
        locale: r.get(5)?,
        account_ref: r.get(6)?,
        purpose: r.get(7)?,
        sends: r.get(8)?,
        max_sends: r.get(9)?,
        attempts: r.get(10)?,
        max_attempts: r.get(11)?,
        test_number: r.get(12)?,
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
        expires_at: r.get(15)?,
        approved_at: r.get(16)?,
    })
}

fn load_verification(c: &Connection, id: &str) -> StoreResult<Option<VerificationRow>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {VERIFICATION_COLUMNS} FROM verifications v WHERE v.id = ?1"
    ))?
    .query_row([id], verification_from)
    .optional()?)
}

fn load_verification_required(c: &Connection, id: &str) -> StoreResult<VerificationRow> {
    load_verification(c, id)?
        .ok_or_else(|| internal(format!("verification {id} vanished inside its transaction")))
}

/// Marks a pending verification that has run out of time as expired, erasing its code
/// hash and any queued message content.
fn expire(c: &Connection, id: &str, now: Millis) -> StoreResult<()> {
    c.prepare_cached(
        "UPDATE verifications SET status = 'expired', code_hash = NULL, updated_at = ?2 WHERE id = ?1 AND status = 'pending'",
    )?
    .execute(params![id, now])?;
    end_queued_messages(c, id, "expired", now)
}

/// A message still to send: the condition of the partial index `outbox_due`, spelled as
/// the index spells it (migration 0006). SQLite's planner uses a partial index only when
/// it finds the index's condition among a query's own terms, so every statement that
/// should read through the index says it this way (see the test at the end).
macro_rules! due_condition {
    () => {
        "(status = 'queued' OR status = 'sending' OR status = 'retry')"
    };
}

fn end_queued_messages(
    c: &Connection,
    verification_id: &str,
    status: &str,
    now: Millis,
) -> StoreResult<()> {
    c.prepare_cached(concat!(
        "UPDATE outbox SET status = ?2, payload = NULL, lease_until = NULL, updated_at = ?3
             WHERE verification_id = ?1 AND ",
        due_condition!()
    ))?
    .execute(params![verification_id, status, now])?;
    Ok(())
}

const ENQUEUE: &str = "INSERT INTO outbox (verification_id, subject_id, channel, payload, status, attempts,
                                     next_attempt_at, lease_until, not_after, created_at, updated_at)
     VALUES (?1, ?2, ?3, ?4, CASE WHEN ?7 IS NULL THEN 'queued' ELSE 'sending' END,
             CASE WHEN ?7 IS NULL THEN 0 ELSE 1 END, ?5, ?7, ?6, ?5, ?5)";

/// Queues a message; claimed by the caller (attempt 1, leased until `lease_until`) when
/// that is given. Returns the message's id.
#[allow(clippy::too_many_arguments)]
fn enqueue(
    c: &Connection,
    verification_id: &str,
    subject_id: i64,
    channel: verify::Channel,
    payload: &[u8],
    now: Millis,
    not_after: Millis,
    lease_until: Option<Millis>,
) -> StoreResult<i64> {
    c.prepare_cached(ENQUEUE)?.execute(params![
        verification_id,
        subject_id,
        channel.as_str(),
        payload,
        now,
        not_after,
        lease_until
    ])?;
    Ok(c.last_insert_rowid())
}

fn lockout_until(c: &Connection, subject_id: i64, service_id: &str) -> StoreResult<Option<Millis>> {
    Ok(
        c.prepare_cached("SELECT until FROM lockouts WHERE subject_id = ?1 AND service_id = ?2")?
            .query_row(params![subject_id, service_id], |r| r.get(0))
            .optional()?,
    )
}

pub fn start(c: &Connection, codes: &CodeHasher, cmd: StartCmd) -> StoreResult<StartOutcome> {
    let StartCmd {
        id_if_new,
        service_id,
        config,
        blind_index,
        new_subject,
        sealed,
        reseal,
        channel,
        locale,
        account_ref,
        purpose,
        code,
        idempotency,
        claim_for_ms,
        prefix,
        now,
    } = cmd;
    // An idempotent retry answers with what the first request created, sending nothing.
    if let Some(idem) = &idempotency {
        let earlier: Option<(Vec<u8>, String)> = c
            .prepare_cached("SELECT fingerprint, verification_id FROM idempotency_keys WHERE api_key_id = ?1 AND key = ?2")?
            .query_row(params![idem.api_key_id, idem.key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((fp, vid)) = earlier {
            if fp != idem.fingerprint {
                return Ok(StartOutcome::IdempotencyMismatch);
            }
            return Ok(StartOutcome::Replayed(load_verification_required(c, &vid)?));
        }
    }

    // The common case at sign-up is a number never seen before: the caller sealed
    // everything under a fresh key already. A known number is sealed again under its own.
    let (subject_id, sealed, known) = match find_subject(c, &blind_index)? {
        Some(existing) if existing.wrapped_key.is_some() => {
            let sealed =
                reseal(&existing).ok_or_else(|| internal("subject key does not unwrap"))?;
            (existing.id, sealed, true)
        }
        Some(_) => {
            return Err(internal(
                "the subject of this number was erased; re-keying is not supported yet",
            ))
        }
        None => {
            let s = &new_subject;
            c.prepare_cached(
                "INSERT INTO subjects (blind_index, wrapped_key, phone_ct, country_code, region, number_type, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![&blind_index.0[..], s.wrapped_key, s.phone_ct, s.country_code, s.region, s.number_type, now])?;
            (c.last_insert_rowid(), sealed, false)
        }
    };

    // A subject created just now has no lockout and no pending verification.
    let locked_until: Option<Millis> = if known {
        lockout_until(c, subject_id, &service_id)?
    } else {
        None
    };
    let pending: Option<(VerificationRow, Millis)> = if known {
        c.prepare_cached(&format!(
            "SELECT {VERIFICATION_COLUMNS}, v.last_sent_at FROM verifications v
             WHERE v.subject_id = ?1 AND v.service_id = ?2 AND v.status = 'pending'"
        ))?
        .query_row(params![subject_id, service_id], |r| {
            Ok((verification_from(r)?, r.get(17)?))
        })
        .optional()?
    } else {
        None
    };
    let pending_state = pending.as_ref().map(|(v, last)| PendingState {
        expires_at: v.expires_at,
        sends: v.sends,
        max_sends: v.max_sends,
        last_sent_at: *last,
    });

    let plan = match verify::plan_start(pending_state.as_ref(), locked_until, &config, now) {
        Ok(plan) => plan,
        Err(why) => return Ok(StartOutcome::Refused(why)),
    };
    let expires_at = now + i64::from(config.ttl_seconds) * 1000;
    let (row, resent) = match (plan, pending) {
        (StartPlan::Resend, Some((row, _))) => {
            // A new code replaces the old one; wrong guesses so far still count.
            let hash = codes.hash(&row.id, code.expose());
            c.prepare_cached(
                "UPDATE verifications SET code_hash = ?2, channel = ?3, sends = sends + 1, last_sent_at = ?4,
                        expires_at = ?5, updated_at = ?4
                 WHERE id = ?1 AND status = 'pending' AND sends < max_sends",
            )?
            .execute(params![row.id, &hash[..], channel.as_str(), now, expires_at])?;
            // Messages with the superseded code must not go out any more.
            end_queued_messages(c, &row.id, "canceled", now)?;
            (row.resent(channel, now, expires_at), true)
        }
        (plan, pending) => {
            if let (StartPlan::New { expire_stale: true }, Some((old, _))) = (&plan, &pending) {
                expire(c, &old.id, now)?;
            }
            let hash = codes.hash(&id_if_new, code.expose());
            let row = VerificationRow::pending(
                NewVerification {
                    id: id_if_new,
                    service_id,
                    subject_id,
                    channel,
                    locale,
                    account_ref,
                    purpose,
                    test_number: sealed.message.is_none(),
                },
                &config,
                now,
                expires_at,
            );
            c.prepare_cached(
                "INSERT INTO verifications (id, service_id, subject_id, status, channel, code_hash, locale, account_ref,
                    purpose, signals_ct, sends, max_sends, attempts, max_attempts, lockout_ms, test_number, created_at,
                    updated_at, expires_at, last_sent_at, prefix)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10, 0, ?11, ?12, ?13, ?14, ?14, ?15, ?14, ?16)",
            )?
            .execute(params![
                row.id,
                row.service_id,
                subject_id,
                channel.as_str(),
                &hash[..],
                row.locale,
                row.account_ref,
                row.purpose,
                sealed.signals_ct,
                row.max_sends,
                row.max_attempts,
                i64::from(config.lockout_seconds) * 1000,
                row.test_number,
                now,
                expires_at,
                prefix,
            ])
            .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict("pending_verification") } else { e.into() })?;
            (row, false)
        }
    };
    let lease_until = claim_for_ms.map(|ms| now + ms);
    let message = match &sealed.message {
        Some(payload) => Some(enqueue(
            c,
            &row.id,
            subject_id,
            channel,
            payload,
            now,
            expires_at,
            lease_until,
        )?),
        None => None,
    };
    if let Some(idem) = &idempotency {
        c.prepare_cached(
            "INSERT INTO idempotency_keys (api_key_id, key, fingerprint, verification_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![idem.api_key_id, idem.key, &idem.fingerprint[..], row.id, now])?;
    }
    Ok(StartOutcome::Started {
        verification: row,
        resent,
        claimed_message: message.filter(|_| lease_until.is_some()),
    })
}

pub fn check(
    c: &Connection,
    codes: &CodeHasher,
    id: &str,
    code: &OtpCode,
    now: Millis,
) -> StoreResult<CheckOutcome> {
    let loaded: Option<(VerificationRow, SubjectSecrets, Option<Vec<u8>>, i64)> = c
        .prepare_cached(&format!(
            "SELECT {VERIFICATION_COLUMNS}, s.id, s.blind_index, s.wrapped_key, s.phone_ct, v.code_hash, v.lockout_ms
             FROM verifications v JOIN subjects s ON s.id = v.subject_id WHERE v.id = ?1"
        ))?
        .query_row([id], |r| Ok((verification_from(r)?, subject_from(r, 17)?, r.get(21)?, r.get(22)?)))
        .optional()?;
    let Some((row, subject, hash, lockout_ms)) = loaded else {
        return Ok(CheckOutcome::NotFound);
    };
    let checked = |row: VerificationRow| Checked {
        row,
        subject: subject.clone(),
    };
    let matches = hash
        .as_deref()
        .is_some_and(|h| codes.matches(id, code.expose(), h));
    let state = CheckState {
        status: row.status,
        expires_at: row.expires_at,
        attempts: row.attempts,
        max_attempts: row.max_attempts,
        lockout_seconds: u32::try_from(lockout_ms / 1000).unwrap_or(u32::MAX),
    };
    let plan = match verify::plan_check(&state, matches, now) {
        Ok(p) => p,
        Err(why) => {
            let why = match why {
                verify::VerifyError::MaxAttemptsReached { .. } => {
                    let until = lockout_until(c, row.subject_id, &row.service_id)?;
                    verify::VerifyError::MaxAttemptsReached {
                        retry_after_ms: until.map_or(0, |u| (u - now).max(0)),
                    }
                }
                other => other,
            };
            return Ok(CheckOutcome::Refused {
                v: checked(row),
                why,
            });
        }
    };
    match plan {
        CheckPlan::Approve => {
            // The single-use guarantee: of any number of racing checks, only the one whose
            // conditional update changes the row approves.
            let n = c
                .prepare_cached(
                    "UPDATE verifications SET status = 'approved', code_hash = NULL, approved_at = ?2, updated_at = ?2
                     WHERE id = ?1 AND status = 'pending' AND expires_at > ?2 AND attempts < max_attempts",
                )?
                .execute(params![id, now])?;
            if n != 1 {
                let row = load_verification_required(c, id)?;
                return Ok(CheckOutcome::Refused {
                    why: verify::VerifyError::NotPending(row.status),
                    v: checked(row),
                });
            }
            end_queued_messages(c, id, "canceled", now)?;
            // The row as the update left it, without reading it back.
            Ok(CheckOutcome::Approved(checked(row.approved(now))))
        }
        CheckPlan::Wrong { .. } | CheckPlan::Exhausted { .. } => {
            let n = c
                .prepare_cached(
                    "UPDATE verifications SET attempts = attempts + 1, updated_at = ?2,
                        status = CASE WHEN attempts + 1 >= max_attempts THEN 'max_attempts_reached' ELSE status END,
                        code_hash = CASE WHEN attempts + 1 >= max_attempts THEN NULL ELSE code_hash END
                     WHERE id = ?1 AND status = 'pending'",
                )?
                .execute(params![id, now])?;
            let row = load_verification_required(c, id)?;
            if n != 1 {
                return Ok(CheckOutcome::Refused {
                    why: verify::VerifyError::NotPending(row.status),
                    v: checked(row),
                });
            }
            if let CheckPlan::Exhausted { locked_until } = plan {
                c.prepare_cached(
                    "INSERT INTO lockouts (subject_id, service_id, until) VALUES (?1, ?2, ?3)
                     ON CONFLICT (subject_id, service_id) DO UPDATE SET until = MAX(until, excluded.until)",
                )?
                .execute(params![row.subject_id, row.service_id, locked_until])?;
                end_queued_messages(c, id, "canceled", now)?;
                let why = verify::VerifyError::MaxAttemptsReached {
                    retry_after_ms: locked_until - now,
                };
                return Ok(CheckOutcome::Refused {
                    v: checked(row),
                    why,
                });
            }
            let attempts_left = row.max_attempts.saturating_sub(row.attempts);
            Ok(CheckOutcome::Wrong {
                v: checked(row),
                attempts_left,
            })
        }
        CheckPlan::Expire => {
            expire(c, id, now)?;
            Ok(CheckOutcome::Refused {
                v: checked(load_verification_required(c, id)?),
                why: verify::VerifyError::Expired,
            })
        }
    }
}

pub fn get_verification(c: &Connection, id: &str) -> StoreResult<Option<VerificationDetails>> {
    let found: Option<(VerificationRow, SubjectSecrets)> = c
        .prepare_cached(&format!(
            "SELECT {VERIFICATION_COLUMNS}, s.id, s.blind_index, s.wrapped_key, s.phone_ct
             FROM verifications v JOIN subjects s ON s.id = v.subject_id WHERE v.id = ?1"
        ))?
        .query_row([id], |r| Ok((verification_from(r)?, subject_from(r, 17)?)))
        .optional()?;
    let Some((row, subject)) = found else {
        return Ok(None);
    };
    let sends = c
        .prepare_cached(
            "SELECT channel, status, created_at FROM outbox WHERE verification_id = ?1 ORDER BY id",
        )?
        .query_map([id], |r| {
            let ch: String = r.get(0)?;
            Ok(SendAttempt {
                channel: verify::Channel::parse(&ch).unwrap_or(verify::Channel::Sms),
                status: r.get(1)?,
                created_at: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(VerificationDetails {
        row,
        subject,
        sends,
    }))
}

pub fn find_pending(
    c: &Connection,
    bi: &BlindIndex,
    service_id: &str,
    now: Millis,
) -> StoreResult<Option<String>> {
    Ok(c
        .prepare_cached(
            "SELECT v.id FROM verifications v JOIN subjects s ON s.id = v.subject_id
             WHERE s.blind_index = ?1 AND v.service_id = ?2 AND v.status = 'pending' AND v.expires_at > ?3",
        )?
        .query_row(params![&bi.0[..], service_id, now], |r| r.get(0))
        .optional()?)
}

pub fn verification_owner(c: &Connection, id: &str) -> StoreResult<Option<(BlindIndex, String)>> {
    Ok(c
        .prepare_cached(
            "SELECT s.blind_index, v.service_id FROM verifications v JOIN subjects s ON s.id = v.subject_id
             WHERE v.id = ?1",
        )?
        .query_row([id], |r| {
            let bi: Vec<u8> = r.get(0)?;
            Ok((bi, r.get::<_, String>(1)?))
        })
        .optional()?
        .and_then(|(bi, service)| Some((BlindIndex::from_slice(&bi)?, service))))
}

pub fn cancel(c: &Connection, id: &str, now: Millis) -> StoreResult<CancelOutcome> {
    let n = c
        .prepare_cached(
            "UPDATE verifications SET status = 'canceled', code_hash = NULL, updated_at = ?2
             WHERE id = ?1 AND status = 'pending' AND expires_at > ?2",
        )?
        .execute(params![id, now])?;
    if n == 1 {
        end_queued_messages(c, id, "canceled", now)?;
        return Ok(CancelOutcome::Canceled(load_verification_required(c, id)?));
    }
    match load_verification(c, id)? {
        None => Ok(CancelOutcome::NotFound),
        Some(row) => Ok(CancelOutcome::NotPending(row)),
    }
}

// ---------------------------------------------------------------- bindings

fn binding_by_account(c: &Connection, account_ref: &str) -> StoreResult<Option<BindingRow>> {
    Ok(c
        .prepare_cached(
            "SELECT b.account_ref, b.verification_id, b.verified_at, s.id, s.blind_index, s.wrapped_key, s.phone_ct
             FROM bindings b JOIN subjects s ON s.id = b.subject_id
             WHERE b.account_ref = ?1 AND b.ended_at IS NULL",
        )?
        .query_row([account_ref], |r| {
            Ok(BindingRow {
                account_ref: r.get(0)?,
                verification_id: r.get(1)?,
                verified_at: r.get(2)?,
                subject: subject_from(r, 3)?,
            })
        })
        .optional()?)
}

pub fn bind(
    c: &Connection,
    account_ref: &str,
    verification_id: &str,
    now: Millis,
    rules: BindRules,
) -> StoreResult<BindOutcome> {
    let Some(v) = load_verification(c, verification_id)? else {
        return Ok(BindOutcome::VerificationNotFound);
    };
    let Some(approved_at) = v
        .approved_at
        .filter(|_| v.status == verify::Status::Approved)
    else {
        return Ok(BindOutcome::NotApproved);
    };
    if v.account_ref.as_deref().is_some_and(|a| a != account_ref) {
        return Ok(BindOutcome::AccountMismatch);
    }
    let existing = binding_by_account(c, account_ref)?;
    if let Some(b) = &existing {
        if b.subject.id == v.subject_id {
            // Binding the same number again is a no-op: the call is idempotent.
            return Ok(BindOutcome::Bound {
                binding: b.clone(),
                replaced: false,
                superseded: 0,
            });
        }
    }
    if now - approved_at > rules.approval_window_ms {
        return Ok(BindOutcome::Stale);
    }
    // The cap counts every other account bound to the number within the window, ended
    // bindings included: unbinding (or deleting the account) does not free a place.
    let others: i64 = c
        .prepare_cached(
            "SELECT COUNT(DISTINCT account_ref) FROM bindings
             WHERE subject_id = ?1 AND verified_at > ?2 AND account_ref <> ?3",
        )?
        .query_row(
            params![v.subject_id, now - rules.cap_window_ms, account_ref],
            |r| r.get(0),
        )?;
    if others >= i64::from(rules.max_accounts) {
        return Ok(BindOutcome::PhoneLimitReached);
    }
    let replaced = existing.is_some();
    if replaced {
        c.prepare_cached("UPDATE bindings SET ended_at = ?2, end_reason = 'replaced' WHERE account_ref = ?1 AND ended_at IS NULL")?
            .execute(params![account_ref, now])?;
    }
    let superseded = if rules.one_verified_holder {
        c.prepare_cached(
            "UPDATE bindings SET ended_at = ?2, end_reason = 'superseded'
             WHERE subject_id = ?1 AND ended_at IS NULL AND account_ref <> ?3",
        )?
        .execute(params![v.subject_id, now, account_ref])? as u32
    } else {
        0
    };
    c.prepare_cached(
        "INSERT INTO bindings (account_ref, subject_id, verification_id, verified_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![account_ref, v.subject_id, verification_id, approved_at])?;
    let binding = binding_by_account(c, account_ref)?
        .ok_or_else(|| internal("binding vanished inside its transaction"))?;
    Ok(BindOutcome::Bound {
        binding,
        replaced,
        superseded,
    })
}

pub fn get_binding(c: &Connection, account_ref: &str) -> StoreResult<Option<BindingRow>> {
    binding_by_account(c, account_ref)
}

pub fn unbind(c: &Connection, account_ref: &str, now: Millis) -> StoreResult<bool> {
    let n = c
        .prepare_cached("UPDATE bindings SET ended_at = ?2, end_reason = 'unbound' WHERE account_ref = ?1 AND ended_at IS NULL")?
        .execute(params![account_ref, now])?;
    Ok(n > 0)
}

// ---------------------------------------------------------------- decisions

pub fn record_decision(c: &Connection, d: &DecisionRecord) -> StoreResult<i64> {
    c.prepare_cached(
        "INSERT INTO decisions (at, service_id, verification_id, action, reasons, factors, channel,
                                country_code, region, number_type)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        d.at,
        d.service_id,
        d.verification_id,
        d.action,
        d.reasons.join(","),
        d.factors,
        d.channel,
        d.country_code,
        d.region,
        d.number_type
    ])?;
    Ok(c.last_insert_rowid())
}

pub fn list_decisions(c: &Connection, f: &DecisionFilter) -> StoreResult<Vec<DecisionRecord>> {
    let rows = c
        .prepare_cached(
            "SELECT id, at, service_id, verification_id, action, reasons, factors, channel, country_code,
                    region, number_type
             FROM decisions
             WHERE id < ?1 AND (?2 IS NULL OR (',' || reasons || ',') LIKE '%,' || ?2 || ',%')
               AND (?3 IS NULL OR service_id = ?3)
             ORDER BY id DESC LIMIT ?4",
        )?
        .query_map(
            params![f.before_id.unwrap_or(i64::MAX), f.reason, f.service_id, f.limit],
            |r| {
                let reasons: String = r.get(5)?;
                Ok(DecisionRecord {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    service_id: r.get(2)?,
                    verification_id: r.get(3)?,
                    action: r.get(4)?,
                    reasons: reasons.split(',').map(str::to_owned).collect(),
                    factors: r.get(6)?,
                    channel: r.get(7)?,
                    country_code: r.get(8)?,
                    region: r.get(9)?,
                    number_type: r.get(10)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn country_stats(c: &Connection, since: Millis) -> StoreResult<Vec<CountryStats>> {
    let count = |r: &rusqlite::Row<'_>, i: usize| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
    let verifications = c
        .prepare_cached(
            "SELECT s.country_code, COUNT(*), SUM(v.sends), SUM(CASE WHEN v.status = 'approved' THEN 1 ELSE 0 END)
             FROM verifications v JOIN subjects s ON s.id = v.subject_id
             WHERE v.created_at >= ?1 AND v.test_number = 0
             GROUP BY s.country_code",
        )?
        .query_map([since], |r| Ok((r.get(0)?, count(r, 1)?, count(r, 2)?, count(r, 3)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let decisions = c
        .prepare_cached(
            "SELECT country_code, SUM(CASE WHEN action = 'block' THEN 1 ELSE 0 END),
                    SUM(CASE WHEN action = 'shadow_block' THEN 1 ELSE 0 END)
             FROM decisions WHERE at >= ?1 GROUP BY country_code",
        )?
        .query_map([since], |r| Ok((r.get(0)?, count(r, 1)?, count(r, 2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CountryStats::merge(verifications, decisions))
}

pub fn prefix_stats(
    c: &Connection,
    since: Millis,
    limit: u32,
) -> StoreResult<Vec<(String, CountryStats)>> {
    let rows = c
        .prepare_cached(
            "SELECT v.prefix, COUNT(*), SUM(v.sends), SUM(CASE WHEN v.status = 'approved' THEN 1 ELSE 0 END)
             FROM verifications v
             WHERE v.created_at >= ?1 AND v.test_number = 0 AND v.prefix IS NOT NULL
             GROUP BY v.prefix ORDER BY 3 DESC, 1 LIMIT ?2",
        )?
        .query_map(params![since, limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                CountryStats {
                    verifications: r.get::<_, i64>(1)? as u64,
                    sends: r.get::<_, i64>(2)? as u64,
                    approvals: r.get::<_, i64>(3)? as u64,
                    ..CountryStats::default()
                },
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

// ---------------------------------------------------------------- operator lists

pub fn put_list_entry(c: &Connection, e: &ListEntry) -> StoreResult<i64> {
    Ok(c.prepare_cached(
        "INSERT INTO abuse_lists (list, kind, value, reason, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (list, kind, value) DO UPDATE SET reason = excluded.reason,
             created_at = excluded.created_at, expires_at = excluded.expires_at
         RETURNING id",
    )?
    .query_row(
        params![
            e.list,
            e.kind,
            e.value,
            e.reason,
            e.created_at,
            e.expires_at
        ],
        |r| r.get(0),
    )?)
}

pub fn list_entries(c: &Connection, now: Millis) -> StoreResult<Vec<ListEntry>> {
    let rows = c
        .prepare_cached(
            "SELECT id, list, kind, value, reason, created_at, expires_at FROM abuse_lists
             WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY id",
        )?
        .query_map([now], |r| {
            Ok(ListEntry {
                id: r.get(0)?,
                list: r.get(1)?,
                kind: r.get(2)?,
                value: r.get(3)?,
                reason: r.get(4)?,
                created_at: r.get(5)?,
                expires_at: r.get(6)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn remove_list_entry(c: &Connection, id: i64) -> StoreResult<bool> {
    Ok(c.prepare_cached("DELETE FROM abuse_lists WHERE id = ?1")?
        .execute([id])?
        > 0)
}

// ---------------------------------------------------------------- outbox

// The statements that look for messages still to send, through `outbox_due`.

/// Messages whose code has expired are never sent: their content is erased.
const EXPIRE_DUE: &str = concat!(
    "UPDATE outbox SET status = 'expired', payload = NULL, lease_until = NULL, updated_at = ?1
     WHERE not_after <= ?1 AND ",
    due_condition!()
);

/// Due: queued or retry whose time has come, or claimed by a worker whose lease ran out.
/// (Only the outbox has these columns, so they need no table name.)
const CLAIM_DUE: &str = concat!(
    "SELECT o.id, o.verification_id, o.channel, o.payload, o.attempts, o.not_after,
            s.id, s.blind_index, s.wrapped_key, s.phone_ct
     FROM outbox o JOIN subjects s ON s.id = o.subject_id
     WHERE next_attempt_at <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)
       AND payload IS NOT NULL AND ",
    due_condition!(),
    " ORDER BY next_attempt_at LIMIT ?2"
);

/// When the next message falls due.
const NEXT_DUE: &str = concat!(
    "SELECT MIN(COALESCE(MAX(next_attempt_at, lease_until), next_attempt_at)) FROM outbox WHERE ",
    due_condition!()
);

pub fn claim_outbox(
    c: &Connection,
    now: Millis,
    limit: u32,
    lease_ms: i64,
) -> StoreResult<OutboxClaim> {
    // Expired messages first: they are never sent.
    let expired = c.prepare_cached(EXPIRE_DUE)?.execute([now])? as u64;
    let mut items = c
        .prepare_cached(CLAIM_DUE)?
        .query_map(params![now, limit], |r| {
            let ch: String = r.get(2)?;
            Ok(OutboxItem {
                id: r.get(0)?,
                verification_id: r.get(1)?,
                channel: verify::Channel::parse(&ch).unwrap_or(verify::Channel::Sms),
                payload: r.get(3)?,
                attempts: r.get(4)?,
                not_after: r.get(5)?,
                subject: subject_from(r, 6)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut claim = c.prepare_cached(
        "UPDATE outbox SET status = 'sending', lease_until = ?2, attempts = attempts + 1, updated_at = ?3 WHERE id = ?1",
    )?;
    for it in &mut items {
        claim.execute(params![it.id, now + lease_ms, now])?;
        it.attempts += 1;
    }
    Ok(OutboxClaim { items, expired })
}

pub fn finish_outbox(
    c: &Connection,
    results: &[(i64, DeliveryResult)],
    now: Millis,
) -> StoreResult<()> {
    for (id, result) in results {
        finish_one(c, *id, result, now)?;
    }
    Ok(())
}

fn finish_one(c: &Connection, id: i64, result: &DeliveryResult, now: Millis) -> StoreResult<()> {
    match result {
        DeliveryResult::Sent { provider_ref } => {
            c.prepare_cached(
                "UPDATE outbox SET status = 'sent', payload = NULL, lease_until = NULL, provider_ref = ?2, updated_at = ?3
                 WHERE id = ?1 AND status = 'sending'",
            )?
            .execute(params![id, provider_ref, now])?;
        }
        DeliveryResult::Retry { at, error } => {
            c.prepare_cached(
                "UPDATE outbox SET status = 'retry', next_attempt_at = ?2, lease_until = NULL, last_error = ?3, updated_at = ?4
                 WHERE id = ?1 AND status = 'sending'",
            )?
            .execute(params![id, at, error, now])?;
        }
        DeliveryResult::Failed { error } => {
            let vid: Option<String> = c
                .prepare_cached(
                    "UPDATE outbox SET status = 'failed', payload = NULL, lease_until = NULL, last_error = ?2, updated_at = ?3
                     WHERE id = ?1 AND status = 'sending' RETURNING verification_id",
                )?
                .query_row(params![id, error, now], |r| r.get(0))
                .optional()?;
            // A verification whose latest message could not be delivered has failed,
            // unless another message of it was delivered.
            if let Some(vid) = vid {
                c.prepare_cached(
                    "UPDATE verifications SET status = 'failed', code_hash = NULL, updated_at = ?2
                     WHERE id = ?1 AND status = 'pending'
                       AND NOT EXISTS (SELECT 1 FROM outbox WHERE verification_id = ?1 AND status IN ('sent', 'queued', 'sending', 'retry'))",
                )?
                .execute(params![vid, now])?;
            }
        }
    }
    Ok(())
}

pub fn next_outbox_due(c: &Connection) -> StoreResult<Option<Millis>> {
    Ok(c.prepare_cached(NEXT_DUE)?.query_row([], |r| r.get(0))?)
}

// ---------------------------------------------------------------- janitor

pub fn sweep(
    c: &Connection,
    now: Millis,
    idempotency_before: Millis,
    limit: u32,
) -> StoreResult<SweepReport> {
    let ids: Vec<String> = c
        .prepare_cached(
            "SELECT id FROM verifications WHERE status = 'pending' AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
        )?
        .query_map(params![now, limit], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        expire(c, id, now)?;
    }
    let idempotency_keys = c
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE (api_key_id, key) IN
               (SELECT api_key_id, key FROM idempotency_keys WHERE created_at < ?1 LIMIT ?2)",
        )?
        .execute(params![idempotency_before, limit])? as u64;
    let lockouts = c
        .prepare_cached(
            "DELETE FROM lockouts WHERE (subject_id, service_id) IN
               (SELECT subject_id, service_id FROM lockouts WHERE until <= ?1 LIMIT ?2)",
        )?
        .execute(params![now, limit])? as u64;
    let tombstones = c
        .prepare_cached(
            "DELETE FROM bindings WHERE id IN
               (SELECT id FROM bindings WHERE ended_at IS NOT NULL AND verified_at < ?1 LIMIT ?2)",
        )?
        .execute(params![now - TOMBSTONE_RETENTION_MS, limit])? as u64;
    Ok(SweepReport {
        expired: ids.len() as u64,
        idempotency_keys,
        lockouts,
        // Kept in the counters on SQLite.
        guess_budgets: 0,
        tombstones,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column `column` of each row of `EXPLAIN {how} {sql}`, its parameters left NULL.
    fn explain(c: &Connection, how: &str, sql: &str, column: usize) -> Vec<String> {
        let mut explain = c.prepare(&format!("EXPLAIN {how} {sql}")).unwrap();
        let unbound = vec![rusqlite::types::Null; explain.parameter_count()];
        explain
            .query_map(rusqlite::params_from_iter(unbound), |r| r.get(column))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The worker's look-ups read the due messages through `outbox_due`, never the
    /// whole outbox (which keeps every message ever sent), and queueing a message does
    /// not build a temporary B-tree to test the index's condition.
    #[test]
    fn the_outbox_is_searched_through_its_due_index() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut c).unwrap();
        for sql in [EXPIRE_DUE, CLAIM_DUE, NEXT_DUE] {
            let plan = explain(&c, "QUERY PLAN", sql, 3);
            // "SCAN outbox", "SEARCH o USING …": the step that reads the outbox.
            let reads_outbox = |p: &&String| matches!(p.split(' ').nth(1), Some("outbox" | "o"));
            let step = plan.iter().find(reads_outbox);
            assert!(
                step.is_some_and(|p| p.contains("USING INDEX outbox_due")),
                "{sql}\n{plan:?}"
            );
        }
        let program = explain(&c, "", ENQUEUE, 1);
        assert!(
            !program.iter().any(|op| op == "OpenEphemeral"),
            "{program:?}"
        );
    }
}
