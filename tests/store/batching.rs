//! Many requests in flight at once, of every kind a batch can mix: a backend may apply
//! requests that arrive together in one transaction (both do: SQLite's group commit,
//! PostgreSQL's batches), and each must still get the answer it would get alone, in
//! some order — the same number twice, new and known numbers, Idempotency-Keys, several
//! checks of one verification — and a request that fails must fail alone.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use ringfence::clock::Millis;
use ringfence::store::{CheckOutcome, StartCmd, StartOutcome, StoreError, StoreResult};
use ringfence::verify::{Status, VerifyError};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::backend::{each_backend, Backend};
use crate::fixtures::{mobile, otp, CODE, SECOND, T0, WRONG};

/// Sends every command at once, each from its own task; returns the answers by the
/// command's position.
async fn start_all(b: &Backend, cmds: Vec<StartCmd>) -> Vec<StoreResult<StartOutcome>> {
    let mut tasks = JoinSet::new();
    for (i, cmd) in cmds.into_iter().enumerate() {
        let store = b.store.clone();
        tasks.spawn(async move { (i, store.start_verification(cmd).await) });
    }
    let mut outs: Vec<Option<StoreResult<StartOutcome>>> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, out) = done.expect("start task");
        if outs.len() <= i {
            outs.resize_with(i + 1, || None);
        }
        outs[i] = Some(out);
    }
    outs.into_iter()
        .map(|o| o.expect("every start answered"))
        .collect()
}

/// Checks every (id, code) at once; returns the answers in the same order.
async fn check_all(b: &Backend, checks: Vec<(String, &'static str)>) -> Vec<CheckOutcome> {
    let mut tasks = JoinSet::new();
    for (i, (id, code)) in checks.into_iter().enumerate() {
        let store = b.store.clone();
        tasks.spawn(async move {
            let out = store
                .check_verification(&id, otp(code), T0 + 61 * SECOND)
                .await;
            (i, out.expect("check"))
        });
    }
    let mut outs = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outs.push(done.expect("check task"));
    }
    outs.sort_by_key(|(i, _)| *i);
    outs.into_iter().map(|(_, o)| o).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_mixing_new_repeated_known_and_idempotent_starts_answers_each_alone() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        // Numbers 0..10 are known, each with a verification sent a minute ago (past
        // the 30 s cooldown: a new start resends on it).
        let mut known = HashMap::new();
        for n in 0..10 {
            let v = b.start(&svc, &mobile(n)).at(T0).started().await;
            known.insert(mobile(n), v.id);
        }
        let now = T0 + 60 * SECOND;

        let mut cmds = Vec::new();
        let mut kinds = Vec::new();
        let mut resealed = Vec::new();
        // Known numbers, once each: a resend, sealed under the subject's key.
        for n in 0..10 {
            let p = b.start(&svc, &mobile(n)).at(now).prepare();
            resealed.push(p.resealed.clone());
            cmds.push(p.cmd);
            kinds.push(("known", mobile(n)));
        }
        // New numbers, once each.
        for n in 100..160 {
            cmds.push(b.start(&svc, &mobile(n)).at(now).prepare().cmd);
            kinds.push(("new", mobile(n)));
        }
        // New numbers, five times each: one starts, the others are within the cooldown.
        for _ in 0..5 {
            for n in 200..210 {
                cmds.push(b.start(&svc, &mobile(n)).at(now).prepare().cmd);
                kinds.push(("repeated", mobile(n)));
            }
        }
        // New numbers with an Idempotency-Key, three times each: one starts, the
        // others replay it.
        for _ in 0..3 {
            for n in 300..310 {
                let key = format!("key-{n}");
                cmds.push(
                    b.start(&svc, &mobile(n))
                        .at(now)
                        .idempotency("api-1", &key, 7)
                        .prepare()
                        .cmd,
                );
                kinds.push(("idempotent", mobile(n)));
            }
        }
        let outs = start_all(&b, cmds).await;

        let mut started: HashMap<String, Vec<String>> = HashMap::new();
        let (mut cooldowns, mut replays) = (0, HashMap::<String, Vec<String>>::new());
        for ((kind, number), out) in kinds.iter().zip(outs) {
            match (*kind, out.expect("start")) {
                (
                    "known",
                    StartOutcome::Started {
                        verification,
                        resent: true,
                        ..
                    },
                ) => {
                    assert_eq!(verification.id, known[number], "resent on its verification");
                    assert_eq!(verification.sends, 2);
                }
                (
                    "new" | "repeated" | "idempotent",
                    StartOutcome::Started {
                        verification,
                        resent: false,
                        ..
                    },
                ) => {
                    started
                        .entry(number.clone())
                        .or_default()
                        .push(verification.id);
                }
                (
                    "repeated",
                    StartOutcome::Refused(VerifyError::ResendCooldown {
                        retry_after_ms: 30_000,
                    }),
                ) => cooldowns += 1,
                ("idempotent", StartOutcome::Replayed(row)) => {
                    replays.entry(number.clone()).or_default().push(row.id)
                }
                (kind, other) => panic!("a {kind} start answered {other:?}"),
            }
        }
        assert!(
            resealed.iter().all(|r| r.load(Ordering::SeqCst)),
            "known numbers are sealed again under their own keys"
        );
        assert_eq!(started.len(), 60 + 10 + 10, "every new number starts");
        assert!(
            started.values().all(|ids| ids.len() == 1),
            "once per number"
        );
        assert_eq!(cooldowns, 40);
        assert_eq!(replays.len(), 10);
        for (number, ids) in &replays {
            assert_eq!(ids.len(), 2);
            assert!(
                ids.iter().all(|id| *id == started[number][0]),
                "replays name the one start"
            );
        }

        let counts = b.inspect.counts().await;
        assert_eq!(counts.subjects, 10 + 60 + 10 + 10, "one subject per number");
        assert_eq!(counts.verifications, 10 + 60 + 10 + 10);
        assert_eq!(counts.outbox, 2 * 10 + 60 + 10 + 10, "one message per send");
        assert_eq!(counts.idempotency_keys, 10);
        // Every new verification is stored as answered, and its code works.
        for (number, ids) in &started {
            let d = b.details(&ids[0]).await;
            assert_eq!(b.phone_of(&d.subject), *number);
            assert_eq!(d.row.status, Status::Pending);
            assert_eq!((d.row.created_at, d.row.sends), (now, 1));
            assert_eq!(d.sends.len(), 1);
        }
        let some = &started[&mobile(100)][0];
        assert!(matches!(
            b.check(some, CODE, now + SECOND).await,
            CheckOutcome::Approved(_)
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_start_among_many_leaves_nothing_and_the_others_stand() {
    each_backend(|b| async move {
        two_bad_starts_among_many(&b).await;
    })
    .await;
}

/// Sends 40 new numbers, a resend and two starts that fail (an unknown service, a key
/// that does not unwrap) at once. The two fail and leave nothing behind. Every other
/// start either stands or fails as retryable (`Unavailable`: a backend may roll back
/// the failed start's whole batch) and then succeeds when sent again. Returns the
/// positions of the starts that had to be sent again.
pub async fn two_bad_starts_among_many(b: &Backend) -> Vec<usize> {
    let svc = b.service("signup", |_| {}).await;
    let known = b.start(&svc, &mobile(1)).started().await;
    let now = T0 + 60 * SECOND;
    // (number, time) of each start; the bad ones at 7 and 20.
    let mut plan: Vec<(String, Millis)> = (100..140).map(|n| (mobile(n), now)).collect();
    plan.insert(7, (mobile(2), now));
    plan.insert(20, (mobile(1), now));
    plan.push((mobile(1), now + SECOND));
    let resend = plan.len() - 1;

    let mut cmds: Vec<StartCmd> = plan
        .iter()
        .map(|(number, at)| b.start(&svc, number).at(*at).prepare().cmd)
        .collect();
    // A new number on a service that does not exist: its insert fails.
    cmds[7].service_id = "SV-missing".into();
    // A known number whose key does not unwrap: its reseal fails.
    cmds[20].reseal = Box::new(|_| None);
    let outs = start_all(b, cmds).await;

    let mut retried = Vec::new();
    let mut resent = 0;
    for (i, out) in outs.into_iter().enumerate() {
        let out = match out {
            Err(_) if i == 7 || i == 20 => continue,
            Ok(out) if i == 7 || i == 20 => panic!("bad start {i} answered {out:?}"),
            Ok(out) => out,
            Err(StoreError::Unavailable(_)) => {
                retried.push(i);
                let (number, at) = &plan[i];
                b.start(&svc, number).at(*at).send().await
            }
            Err(e) => panic!("start {i} failed: {e}"),
        };
        match out {
            StartOutcome::Started { resent: false, .. } if i != resend => {}
            StartOutcome::Started {
                verification,
                resent: true,
                ..
            } if i == resend => {
                assert_eq!(verification.id, known.id);
                resent += 1;
            }
            other => panic!("start {i} answered {other:?}"),
        }
    }
    assert_eq!(resent, 1);

    let counts = b.inspect.counts().await;
    assert_eq!(
        counts.subjects,
        1 + 40,
        "the failed new number left no subject"
    );
    assert_eq!(counts.verifications, 1 + 40);
    assert_eq!(counts.outbox, 2 + 40, "the failed resend queued nothing");
    assert_eq!(b.details(&known.id).await.row.sends, 2);
    let pending = b
        .store
        .find_pending(&b.blind(&mobile(2)), &svc.id, now)
        .await;
    assert_eq!(pending.unwrap(), None);
    retried
}

/// Starts queued before they are decided, as the HTTP edge queues them while it asks
/// the counters: each is written once its decision gives the command, in whatever order
/// the decisions come, and one withdrawn (refused, or its caller gone) writes nothing
/// and is answered `None`, while the others of its batch are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_queued_before_their_decision_write_only_the_ones_allowed() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let mut tasks = JoinSet::new();
        let mut decisions = Vec::new();
        for n in 0..40u32 {
            let (decided, undecided) = oneshot::channel::<StartCmd>();
            let store = b.store.clone();
            tasks.spawn(async move {
                let cmd = Box::pin(async move { undecided.await.ok() });
                (n, store.start_verification_once_decided(cmd).await)
            });
            decisions.push((n, decided));
        }
        // Let the starts reach the queue, then decide them last first; every third is
        // withdrawn.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        for (n, decided) in decisions.into_iter().rev() {
            if n % 3 == 0 {
                drop(decided);
            } else {
                let cmd = b.start(&svc, &mobile(n)).at(T0).prepare().cmd;
                assert!(decided.send(cmd).is_ok(), "start {n} still waits");
            }
        }
        let mut started = HashMap::new();
        while let Some(done) = tasks.join_next().await {
            let (n, out) = done.expect("start task");
            match (n % 3, out.expect("start")) {
                (0, None) => {}
                (
                    1 | 2,
                    Some(StartOutcome::Started {
                        verification,
                        resent: false,
                        ..
                    }),
                ) => {
                    started.insert(n, verification.id);
                }
                (_, other) => panic!("start {n} answered {other:?}"),
            }
        }
        assert_eq!(started.len(), 26);
        let counts = b.inspect.counts().await;
        assert_eq!(
            (counts.subjects, counts.verifications, counts.outbox),
            (26, 26, 26)
        );
        for n in 0..40u32 {
            let pending = b
                .store
                .find_pending(&b.blind(&mobile(n)), &svc.id, T0)
                .await
                .expect("find_pending");
            assert_eq!(pending.as_ref(), started.get(&n), "number {n}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_1000_concurrent_right_codes_exactly_one_approves() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, &mobile(1)).started().await;
        let outs = check_all(&b, (0..1000).map(|_| (v.id.clone(), CODE)).collect()).await;
        let approved = outs
            .iter()
            .filter(|o| matches!(o, CheckOutcome::Approved(_)))
            .count();
        let refused = outs
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    CheckOutcome::Refused {
                        why: VerifyError::NotPending(Status::Approved),
                        ..
                    }
                )
            })
            .count();
        assert_eq!((approved, refused), (1, 999));
        assert_eq!(b.status(&v.id).await, Status::Approved);
    })
    .await;
}

/// Right and wrong codes for one verification at once: the answers must be those of
/// some order of the checks, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_right_and_wrong_codes_add_up_as_if_one_after_the_other() {
    each_backend(|b| async move {
        let svc = b
            .service("signup", |c| {
                c.max_check_attempts = 5;
                c.lockout_seconds = 600;
            })
            .await;
        for round in 0..5u32 {
            let v = b.start(&svc, &mobile(round)).started().await;
            let checks = (0..60)
                .map(|i| (v.id.clone(), if i % 3 == 0 { CODE } else { WRONG }))
                .collect();
            let outs = check_all(&b, checks).await;

            let (mut approved, mut wrong, mut exhausted, mut after) = (0, vec![], 0, 0);
            for out in &outs {
                match out {
                    CheckOutcome::Approved(_) => approved += 1,
                    CheckOutcome::Wrong { attempts_left, .. } => wrong.push(*attempts_left),
                    CheckOutcome::Refused {
                        why: VerifyError::MaxAttemptsReached { retry_after_ms },
                        v,
                    } if v.row.attempts == 5 => {
                        assert!(*retry_after_ms > 0 && *retry_after_ms <= 600_000);
                        exhausted += 1
                    }
                    CheckOutcome::Refused {
                        why: VerifyError::NotPending(Status::Approved),
                        ..
                    } => after += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            wrong.sort_unstable();
            let row = b.details(&v.id).await.row;
            // Each wrong attempt was counted once and saw the ones before it.
            let expected_left: Vec<u32> = (0..wrong.len() as u32).map(|k| 4 - k).rev().collect();
            assert_eq!(wrong, expected_left, "attempts left count down by one");
            if approved == 1 {
                assert_eq!(row.status, Status::Approved);
                assert_eq!(row.attempts as usize, wrong.len());
                assert!(wrong.len() < 5);
                assert_eq!(exhausted, 0);
                assert_eq!(after, 60 - 1 - wrong.len());
            } else {
                // Four wrong codes came before every right one, then the fifth ended it.
                assert_eq!(approved, 0);
                assert_eq!(row.status, Status::MaxAttemptsReached);
                assert_eq!((row.attempts, wrong.len()), (5, 4));
                assert_eq!(exhausted, 60 - 4);
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_of_many_verifications_each_count_alone() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let mut ids = Vec::new();
        for n in 0..40 {
            ids.push(b.start(&svc, &mobile(n)).started().await.id);
        }
        // Even ones get the right code, odd ones a wrong one; plus unknown ids.
        let mut checks: Vec<(String, &'static str)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), if i % 2 == 0 { CODE } else { WRONG }))
            .collect();
        checks.push(("VE-none-1".into(), CODE));
        checks.push(("VE-none-2".into(), CODE));
        let outs = check_all(&b, checks).await;
        for (i, out) in outs.iter().enumerate() {
            match (i, out) {
                (40.., CheckOutcome::NotFound) => {}
                (i, CheckOutcome::Approved(c)) if i < 40 && i % 2 == 0 => {
                    assert_eq!(c.row.id, ids[i]);
                    assert_eq!(b.phone_of(&c.subject), mobile(i as u32));
                }
                (
                    i,
                    CheckOutcome::Wrong {
                        v,
                        attempts_left: 4,
                    },
                ) if i < 40 && i % 2 == 1 => {
                    assert_eq!(v.row.id, ids[i]);
                    assert_eq!(v.row.attempts, 1);
                }
                (i, other) => panic!("check {i} answered {other:?}"),
            }
        }
        for (i, id) in ids.iter().enumerate() {
            let d = b.details(id).await;
            if i % 2 == 0 {
                assert_eq!((d.row.status, d.row.attempts), (Status::Approved, 0));
                assert_eq!(b.message_statuses(id).await, ["canceled"]);
                assert!(!b.inspect.has_code_hash(id).await);
            } else {
                assert_eq!((d.row.status, d.row.attempts), (Status::Pending, 1));
                assert_eq!(b.message_statuses(id).await, ["queued"]);
                assert!(b.inspect.has_code_hash(id).await);
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_codes_stop_at_the_limit_and_lock_the_number_out() {
    each_backend(|b| async move {
        let svc = b
            .service("signup", |c| {
                c.max_check_attempts = 5;
                c.lockout_seconds = 600;
            })
            .await;
        let v = b.start(&svc, &mobile(1)).started().await;
        let outs = check_all(&b, (0..40).map(|_| (v.id.clone(), WRONG)).collect()).await;

        let (mut left, mut refused) = (Vec::new(), 0);
        for out in &outs {
            match out {
                CheckOutcome::Wrong { attempts_left, .. } => left.push(*attempts_left),
                CheckOutcome::Refused {
                    why: VerifyError::MaxAttemptsReached { retry_after_ms },
                    v,
                } => {
                    assert_eq!(*retry_after_ms, 600_000, "the lockout's full length");
                    assert_eq!(
                        (v.row.status, v.row.attempts),
                        (Status::MaxAttemptsReached, 5)
                    );
                    refused += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        left.sort_unstable();
        assert_eq!(
            (left, refused),
            (vec![1, 2, 3, 4], 36),
            "five attempts counted, once each"
        );
        let row = b.details(&v.id).await.row;
        assert_eq!((row.status, row.attempts), (Status::MaxAttemptsReached, 5));
        assert!(!b.inspect.has_code_hash(&v.id).await, "the code is erased");
        assert_eq!(b.message_statuses(&v.id).await, ["canceled"]);
        let again = b.start(&svc, &mobile(1)).at(T0 + 120 * SECOND).send().await;
        assert!(
            matches!(again, StartOutcome::Refused(VerifyError::LockedOut { .. })),
            "the number is locked out: {again:?}"
        );
    })
    .await;
}
