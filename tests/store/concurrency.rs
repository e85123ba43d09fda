//! Racing requests through the store directly: the guarantees must come from the
//! backend (conditional updates, unique indexes, transactions), whatever the order in
//! which the racers arrive.

use std::collections::HashSet;

use ringfence::store::{CheckOutcome, StartCmd, StartOutcome};
use ringfence::verify::{Status, VerifyError};
use tokio::task::JoinSet;

use crate::backend::{each_backend, Backend};
use crate::fixtures::{mobile, otp, CODE, PHONE, SECOND, T0};

/// Sends all commands at once, each from its own task; returns the outcomes.
async fn start_all(b: &Backend, cmds: Vec<StartCmd>) -> Vec<StartOutcome> {
    let mut tasks = JoinSet::new();
    for cmd in cmds {
        let store = b.store.clone();
        tasks.spawn(async move { store.start_verification(cmd).await });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("start task").expect("start"));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_100_concurrent_right_codes_exactly_one_approves() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;

        let mut tasks = JoinSet::new();
        for _ in 0..100 {
            let (store, id) = (b.store.clone(), v.id.clone());
            tasks.spawn(async move { store.check_verification(&id, otp(CODE), T0 + SECOND).await });
        }
        let (mut approved, mut refused) = (0, 0);
        while let Some(done) = tasks.join_next().await {
            match done.expect("check task").expect("check") {
                CheckOutcome::Approved(_) => approved += 1,
                CheckOutcome::Refused {
                    why: VerifyError::NotPending(Status::Approved),
                    ..
                } => refused += 1,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!((approved, refused), (1, 99), "a code is used once");
        let row = b.details(&v.id).await.row;
        assert_eq!(row.status, Status::Approved);
        assert_eq!(row.attempts, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_for_one_new_number_make_one_verification() {
    each_backend(|b| async move {
        // Default service: 30 s between sends, so all but one are too early.
        let svc = b.service("signup", |_| {}).await;
        let cmds = (0..50)
            .map(|_| b.start(&svc, PHONE).prepare().cmd)
            .collect();
        let outcomes = start_all(&b, cmds).await;

        let mut started = Vec::new();
        for out in outcomes {
            match out {
                StartOutcome::Started {
                    verification,
                    resent: false,
                    ..
                } => started.push(verification),
                StartOutcome::Refused(VerifyError::ResendCooldown {
                    retry_after_ms: 30_000,
                }) => {}
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!(started.len(), 1, "exactly one verification starts");
        let v = &started[0];

        let counts = b.inspect.counts().await;
        assert_eq!(counts.subjects, 1, "one subject per number");
        assert_eq!(counts.verifications, 1);
        assert_eq!(counts.outbox, 1, "one message");
        let pending = b
            .store
            .find_pending(&b.blind(PHONE), &svc.id, T0)
            .await
            .unwrap();
        assert_eq!(pending.as_deref(), Some(v.id.as_str()));
        assert_eq!(b.details(&v.id).await.row.sends, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_resends_stop_exactly_at_max_sends() {
    each_backend(|b| async move {
        // No cooldown: every racer may resend until the sends run out.
        let svc = b
            .service("signup", |c| {
                c.resend_cooldown_seconds = 0;
                c.max_sends = 10;
            })
            .await;
        let cmds = (0..50)
            .map(|_| b.start(&svc, PHONE).prepare().cmd)
            .collect();
        let outcomes = start_all(&b, cmds).await;

        let (mut new, mut resent, mut refused) = (Vec::new(), Vec::new(), 0);
        for out in outcomes {
            match out {
                StartOutcome::Started {
                    verification,
                    resent: false,
                    ..
                } => new.push(verification.id),
                StartOutcome::Started {
                    verification,
                    resent: true,
                    ..
                } => resent.push(verification.id),
                StartOutcome::Refused(VerifyError::MaxSendsReached { .. }) => refused += 1,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!(new.len(), 1, "exactly one verification starts");
        assert_eq!((resent.len(), refused), (9, 40));
        assert!(resent.iter().all(|id| *id == new[0]), "resends reuse it");

        let d = b.details(&new[0]).await;
        assert_eq!(d.row.sends, 10);
        let statuses: Vec<&str> = d.sends.iter().map(|s| s.status.as_str()).collect();
        assert_eq!(statuses.len(), 10, "one message per send");
        assert_eq!(
            statuses.iter().filter(|s| **s == "queued").count(),
            1,
            "only the latest code's message is live: {statuses:?}"
        );
        assert_eq!(b.inspect.counts().await.verifications, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_for_distinct_numbers_all_start() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let cmds = (0..50)
            .map(|n| b.start(&svc, &mobile(n)).prepare().cmd)
            .collect();
        let outcomes = start_all(&b, cmds).await;

        let (mut ids, mut subjects) = (HashSet::new(), HashSet::new());
        for out in outcomes {
            let StartOutcome::Started {
                verification,
                resent: false,
                ..
            } = out
            else {
                panic!("expected a new verification, got {out:?}");
            };
            ids.insert(verification.id);
            subjects.insert(verification.subject_id);
        }
        assert_eq!((ids.len(), subjects.len()), (50, 50));
        let counts = b.inspect.counts().await;
        assert_eq!(
            (counts.subjects, counts.verifications, counts.outbox),
            (50, 50, 50)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_idempotent_retries_replay_one_start() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let cmds = (0..20)
            .map(|_| {
                b.start(&svc, PHONE)
                    .idempotency("key-1", "double-click", 1)
                    .prepare()
                    .cmd
            })
            .collect();
        let outcomes = start_all(&b, cmds).await;

        let (mut started, mut replayed) = (Vec::new(), Vec::new());
        for out in outcomes {
            match out {
                StartOutcome::Started {
                    verification,
                    resent: false,
                    ..
                } => started.push(verification.id),
                StartOutcome::Replayed(row) => replayed.push(row.id),
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!((started.len(), replayed.len()), (1, 19));
        assert!(replayed.iter().all(|id| *id == started[0]));
        let counts = b.inspect.counts().await;
        assert_eq!(
            (counts.verifications, counts.outbox, counts.idempotency_keys),
            (1, 1, 1)
        );
    })
    .await;
}
