//! Checking codes: approval (single use), wrong codes and the attempt limit with its
//! lockout, expiry, unknown verifications.

use ringfence::store::{CheckOutcome, StartOutcome};
use ringfence::verify::{Status, VerifyError};

use crate::backend::{each_backend, Backend};
use crate::fixtures::{otp, CODE, PHONE, PHONE_2, SECOND, T0, WRONG};

#[tokio::test]
async fn the_right_code_approves() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;
        let now = T0 + 5 * SECOND;

        let out = b.check(&v.id, CODE, now).await;
        let CheckOutcome::Approved(c) = out else {
            panic!("expected approval, got {out:?}");
        };
        assert_eq!(c.row.id, v.id);
        assert_eq!(c.row.status, Status::Approved);
        assert_eq!(c.row.approved_at, Some(now));
        assert_eq!(c.row.updated_at, now);
        assert_eq!(c.row.attempts, 0);
        assert_eq!(c.subject.id, v.subject_id);
        assert_eq!(
            b.phone_of(&c.subject),
            PHONE,
            "the subject comes with the answer"
        );

        let stored = b.details(&v.id).await.row;
        assert_eq!(stored.status, Status::Approved);
        assert_eq!(stored.approved_at, Some(now));
        assert!(
            !b.inspect.has_code_hash(&v.id).await,
            "a used code is erased"
        );
        // The code is used: its message, not yet sent, is not sent any more.
        assert_eq!(b.message_statuses(&v.id).await, ["canceled"]);
    })
    .await;
}

#[tokio::test]
async fn an_approved_verification_takes_no_more_codes() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;
        b.check(&v.id, CODE, T0 + SECOND).await;

        for code in [CODE, WRONG] {
            let out = b.check(&v.id, code, T0 + 2 * SECOND).await;
            assert!(
                matches!(
                    out,
                    CheckOutcome::Refused {
                        why: VerifyError::NotPending(Status::Approved),
                        ..
                    }
                ),
                "got {out:?}"
            );
        }
        let row = b.details(&v.id).await.row;
        assert_eq!(row.attempts, 0, "refused checks count no attempt");
        assert_eq!(row.approved_at, Some(T0 + SECOND));
    })
    .await;
}

#[tokio::test]
async fn a_wrong_code_counts_an_attempt() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;

        for (n, left) in [(1, 4), (2, 3)] {
            let now = T0 + n * SECOND;
            let out = b.check(&v.id, WRONG, now).await;
            let CheckOutcome::Wrong {
                v: c,
                attempts_left,
            } = out
            else {
                panic!("expected a wrong code, got {out:?}");
            };
            assert_eq!(attempts_left, left);
            assert_eq!(c.row.attempts, 5 - left);
            assert_eq!(c.row.status, Status::Pending);
            assert_eq!(c.row.updated_at, now);
            assert_eq!(c.subject.id, v.subject_id);
        }
        let CheckOutcome::Approved(c) = b.check(&v.id, CODE, T0 + 3 * SECOND).await else {
            panic!("the right code still approves");
        };
        assert_eq!(c.row.attempts, 2);
    })
    .await;
}

#[tokio::test]
async fn the_last_wrong_code_ends_the_verification_and_locks_the_number_out() {
    each_backend(|b| async move {
        let svc = b
            .service("signup", |c| {
                c.max_check_attempts = 3;
                c.lockout_seconds = 600;
            })
            .await;
        let v = b.start(&svc, PHONE).started().await;
        b.check(&v.id, WRONG, T0 + SECOND).await;
        b.check(&v.id, WRONG, T0 + 2 * SECOND).await;

        let out = b.check(&v.id, WRONG, T0 + 3 * SECOND).await;
        let CheckOutcome::Refused { v: c, why } = out else {
            panic!("expected a refusal, got {out:?}");
        };
        assert_eq!(
            why,
            VerifyError::MaxAttemptsReached {
                retry_after_ms: 600_000
            }
        );
        assert_eq!(c.row.status, Status::MaxAttemptsReached);
        assert_eq!(c.row.attempts, 3);
        assert!(
            !b.inspect.has_code_hash(&v.id).await,
            "the code hash is erased"
        );
        assert_eq!(b.message_statuses(&v.id).await, ["canceled"]);

        // Even the right code is refused now, with the time left of the lockout.
        let out = b.check(&v.id, CODE, T0 + 4 * SECOND).await;
        let CheckOutcome::Refused { v: c, why } = out else {
            panic!("expected a refusal, got {out:?}");
        };
        assert_eq!(
            why,
            VerifyError::MaxAttemptsReached {
                retry_after_ms: 599_000
            }
        );
        assert_eq!(c.row.attempts, 3, "refused checks count no attempt");

        let out = b.start(&svc, PHONE).at(T0 + 4 * SECOND).send().await;
        assert!(
            matches!(
                out,
                StartOutcome::Refused(VerifyError::LockedOut {
                    retry_after_ms: 599_000
                })
            ),
            "got {out:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_check_at_expiry_records_the_expiry() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;

        // One millisecond before expiry the verification is still alive.
        assert!(matches!(
            b.check(&v.id, WRONG, v.expires_at - 1).await,
            CheckOutcome::Wrong { .. }
        ));
        for now in [v.expires_at, v.expires_at + SECOND] {
            let out = b.check(&v.id, CODE, now).await;
            let CheckOutcome::Refused { v: c, why } = out else {
                panic!("expected a refusal, got {out:?}");
            };
            assert_eq!(why, VerifyError::Expired);
            assert_eq!(c.row.status, Status::Expired);
        }
        assert_eq!(b.status(&v.id).await, Status::Expired);
        assert!(
            !b.inspect.has_code_hash(&v.id).await,
            "the code hash is erased"
        );
        assert_eq!(b.message_statuses(&v.id).await, ["expired"]);
        let messages = b.inspect.outbox(&v.id).await;
        assert!(!messages[0].has_payload, "the message content is erased");
    })
    .await;
}

#[tokio::test]
async fn an_unknown_verification_is_not_found() {
    each_backend(|b| async move {
        let out = b
            .check("VE00000000000000000000000000000000", CODE, T0)
            .await;
        assert!(matches!(out, CheckOutcome::NotFound), "got {out:?}");
    })
    .await;
}

#[tokio::test]
async fn a_string_that_is_no_verification_id_is_not_found_and_changes_nothing() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;
        // Hostile strings where an id belongs: not found, on either backend.
        for id in [
            "VE0000000000000000000000000000000g",
            "VE'}'::text[]); DROP TABLE subjects; --",
            &format!("{}' OR 'x'='x", v.id),
            "",
        ] {
            let out = b.check(id, CODE, T0 + 1).await;
            assert!(matches!(out, CheckOutcome::NotFound), "{id}: {out:?}");
        }
        // Nothing was counted against the verification.
        let out = b.check(&v.id, CODE, T0 + 2).await;
        assert!(matches!(out, CheckOutcome::Approved(_)), "got {out:?}");
    })
    .await;
}

/// A gate that answers as told and remembers whom it was asked about: the number, the
/// service, and `None` when asked before the code was compared, `Some(right)` after.
struct Gate {
    admit: bool,
    /// The budget named to a store that keeps it.
    budget: ringfence::counters::Rate,
    asked: std::sync::Mutex<Vec<(ringfence::crypto::BlindIndex, String, Option<bool>)>>,
}

#[async_trait::async_trait]
impl ringfence::store::CheckGate for Gate {
    async fn admit(&self, bi: &ringfence::crypto::BlindIndex, service_id: &str) -> bool {
        self.asked
            .lock()
            .unwrap()
            .push((*bi, service_id.to_owned(), None));
        self.admit
    }

    async fn budget(&self, _service_id: &str) -> Option<ringfence::counters::Rate> {
        Some(self.budget)
    }

    fn judged(
        &self,
        bi: &ringfence::crypto::BlindIndex,
        service_id: &str,
        right: bool,
        found: &ringfence::counters::GcraDecision,
    ) -> bool {
        self.asked
            .lock()
            .unwrap()
            .push((*bi, service_id.to_owned(), Some(right)));
        self.admit && found.allowed
    }
}

impl Gate {
    /// Asserts that every check was asked about `bi` on `service`, and that a store
    /// asked either before comparing each time or after comparing each time, with
    /// whether the code was right (`rights`, in order).
    fn assert_asked(&self, bi: ringfence::crypto::BlindIndex, service: &str, rights: &[bool]) {
        let asked = self.asked.lock().unwrap();
        assert_eq!(asked.len(), rights.len(), "{asked:?}");
        assert!(asked.iter().all(|(b, s, _)| *b == bi && s == service));
        let when: Vec<Option<bool>> = asked.iter().map(|a| a.2).collect();
        let before = vec![None; rights.len()];
        let after: Vec<Option<bool>> = rights.iter().map(|r| Some(*r)).collect();
        assert!(when == before || when == after, "asked {when:?}");
    }
}

fn gate(admit: bool) -> std::sync::Arc<Gate> {
    std::sync::Arc::new(Gate {
        admit,
        budget: ringfence::counters::Rate::per_day(1000),
        asked: Default::default(),
    })
}

/// A gated check asks its gate with the verification's number and service, before
/// the code is compared or, where the store compares one code of a number at a time,
/// after, saying whether it was right; a refusal changes nothing.
#[tokio::test]
async fn a_gate_is_asked_with_the_number_and_service_and_a_refusal_changes_nothing() {
    each_backend(|b| async move { gate_asked_and_refusal_changes_nothing(b, false).await }).await;
}

/// The same of a check of the pending verification of a number on a service (a check
/// by number): the gate is asked exactly as for a check by id.
#[tokio::test]
async fn a_check_by_number_asks_its_gate_as_a_check_by_id_does() {
    each_backend(|b| async move { gate_asked_and_refusal_changes_nothing(b, true).await }).await;
}

/// A gated check of `id`, or, when `by_number` names a service, of the pending
/// verification of `number` on it.
async fn gated_check(
    b: &Backend,
    by_number: Option<(&str, &str)>,
    id: &str,
    code: &str,
    now: i64,
    gate: &std::sync::Arc<Gate>,
) -> CheckOutcome {
    let gate = gate.clone();
    match by_number {
        None => b.store.check_gated(id, otp(code), now, gate).await,
        Some((number, service)) => {
            let bi = b.blind(number);
            b.store
                .check_pending_gated(&bi, service, otp(code), now, gate)
                .await
        }
    }
    .unwrap()
}

async fn gate_asked_and_refusal_changes_nothing(b: Backend, by_number: bool) {
    let svc = b.service("signup", |_| {}).await;
    let v = b.start(&svc, PHONE).started().await;
    let now = T0 + SECOND;
    let owner = by_number.then_some((PHONE, svc.id.as_str()));
    // How this store asks a check by id (before comparing, or after): a check by
    // number must ask the same way.
    let by_id = gate(true);
    let other = b.start(&svc, PHONE_2).started().await;
    gated_check(&b, None, &other.id, WRONG, now, &by_id).await;
    let asks_after = by_id.asked.lock().unwrap()[0].2.is_some();

    let refuse = gate(false);
    for code in [CODE, WRONG] {
        let out = gated_check(&b, owner, &v.id, code, now, &refuse).await;
        assert!(matches!(out, CheckOutcome::Gated), "{out:?}");
    }
    refuse.assert_asked(b.blind(PHONE), &svc.id, &[true, false]);
    assert_eq!(
        refuse.asked.lock().unwrap()[0].2.is_some(),
        asks_after,
        "asked as a check by id is"
    );
    let row = b.details(&v.id).await.row;
    assert_eq!((row.status, row.attempts), (Status::Pending, 0));
    assert!(b.inspect.has_code_hash(&v.id).await);

    let admit = gate(true);
    let out = gated_check(&b, owner, &v.id, WRONG, now, &admit).await;
    assert!(
        matches!(
            out,
            CheckOutcome::Wrong {
                attempts_left: 4,
                ..
            }
        ),
        "{out:?}"
    );
    let out = gated_check(&b, owner, &v.id, CODE, now, &admit).await;
    assert!(matches!(out, CheckOutcome::Approved(_)), "{out:?}");
    admit.assert_asked(b.blind(PHONE), &svc.id, &[false, true]);

    // An unknown verification, or a number with none pending (`PHONE`'s is approved
    // now), is not found; nobody is asked about it.
    let unknown = gate(true);
    let out = gated_check(
        &b,
        owner,
        "VE01ffffffffffffffffffffffffffffff",
        CODE,
        now,
        &unknown,
    )
    .await;
    assert!(matches!(out, CheckOutcome::NotFound), "{out:?}");
    assert!(unknown.asked.lock().unwrap().is_empty());
}

/// Racing checks of one verification (on PostgreSQL one batch, its checks decided one
/// after another): exactly one approves, and a store that asks after comparing asks
/// once per code compared — the wrong codes it told the gate of are the verification's
/// attempts, and nothing after the approval is compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_checks_of_one_verification_ask_the_gate_once_per_code_compared() {
    each_backend(|b| async move { racing_checks(b, false).await }).await;
}

/// The same with checks by number: on PostgreSQL the batch finds each one's
/// verification, the same for all, and decides them one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_checks_by_number_ask_the_gate_once_per_code_compared() {
    each_backend(|b| async move { racing_checks(b, true).await }).await;
}

async fn racing_checks(b: Backend, by_number: bool) {
    let svc = b.service("signup", |_| {}).await;
    let v = b.start(&svc, PHONE).started().await;
    let now = T0 + SECOND;
    let admit = gate(true);
    let owner = by_number.then_some((PHONE, svc.id.as_str()));
    let checks = [WRONG, WRONG, CODE, WRONG, WRONG]
        .map(|code| gated_check(&b, owner, &v.id, code, now, &admit));
    let outs = futures::future::join_all(checks).await;
    let approved = outs
        .iter()
        .filter(|o| matches!(o, CheckOutcome::Approved(_)))
        .count();
    assert_eq!(approved, 1, "{outs:?}");
    let row = b.details(&v.id).await.row;
    assert_eq!(row.status, Status::Approved);
    let when: Vec<Option<bool>> = admit.asked.lock().unwrap().iter().map(|a| a.2).collect();
    if when.iter().all(Option::is_none) {
        // A check by number that came after the approval found nothing pending.
        let found = outs
            .iter()
            .filter(|o| !matches!(o, CheckOutcome::NotFound))
            .count();
        assert_eq!(when.len(), found, "asked before each comparison: {outs:?}");
        assert!(by_number || found == 5, "{outs:?}");
    } else {
        let wrong = when.iter().filter(|w| **w == Some(false)).count();
        assert_eq!(wrong as u32, row.attempts, "asked {when:?}");
        assert_eq!(when.last(), Some(&Some(true)), "asked {when:?}");
        assert_eq!(when.len(), wrong + 1);
    }
}

/// A store that keeps the guess budget itself (PostgreSQL) applies the rate its gate
/// names: wrong codes spend, a right code needs a unit left and spends none, the budget
/// spans the number's verifications on the service, a refused code changes nothing, and
/// the budget is whole again once its period has passed (the sweeper then deletes it).
/// A store that asks before comparing (SQLite) keeps no budget: the counters do.
#[tokio::test]
async fn a_store_that_keeps_the_guess_budget_spends_it_on_wrong_codes_only() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let budget = std::sync::Arc::new(Gate {
            admit: true,
            budget: ringfence::counters::Rate::per_day(2),
            asked: Default::default(),
        });
        let check = |id: String, code: &'static str, now: i64| {
            let (b, budget) = (&b, budget.clone());
            async move { gated_check(b, None, &id, code, now, &budget).await }
        };
        let first = b.start(&svc, PHONE).started().await;
        let now = T0 + SECOND;
        let out = check(first.id.clone(), WRONG, now).await;
        if budget.asked.lock().unwrap()[0].2.is_none() {
            return; // asked before comparing: the budget is the gate's
        }
        assert!(matches!(out, CheckOutcome::Wrong { .. }), "{out:?}");
        let out = check(first.id.clone(), CODE, now).await;
        assert!(matches!(out, CheckOutcome::Approved(_)), "{out:?}");

        // One unit left, on the number's next verification too.
        let second = b.start(&svc, PHONE).at(now).started().await;
        let out = check(second.id.clone(), WRONG, now).await;
        assert!(matches!(out, CheckOutcome::Wrong { .. }), "{out:?}");
        for code in [WRONG, CODE] {
            let out = check(second.id.clone(), code, now).await;
            assert!(matches!(out, CheckOutcome::Gated), "{code}: {out:?}");
        }
        let row = b.details(&second.id).await.row;
        assert_eq!((row.status, row.attempts), (Status::Pending, 1));
        assert!(b.inspect.has_code_hash(&second.id).await);
        // Another number's budget is its own.
        let other = b.start(&svc, PHONE_2).at(now).started().await;
        let out = check(other.id.clone(), WRONG, now).await;
        assert!(matches!(out, CheckOutcome::Wrong { .. }), "{out:?}");

        // A day later both budgets are whole: the sweeper deletes them, and the
        // number's next verification has two wrong codes again.
        let later = now + 24 * 3600 * SECOND;
        let report = b.store.sweep(later, T0, 100).await.unwrap();
        assert_eq!(report.guess_budgets, 2, "{report:?}");
        let third = b.start(&svc, PHONE).at(later).started().await;
        for _ in 0..2 {
            let out = check(third.id.clone(), WRONG, later).await;
            assert!(matches!(out, CheckOutcome::Wrong { .. }), "{out:?}");
        }
        let out = check(third.id.clone(), WRONG, later).await;
        assert!(matches!(out, CheckOutcome::Gated), "{out:?}");
    })
    .await;
}
