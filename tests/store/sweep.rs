//! The janitor's `sweep`: expire forgotten verifications, forget old idempotency keys,
//! drop ended lockouts, a bounded number of each per call.

use ringfence::store::{BindRules, StartOutcome, SweepReport, TOMBSTONE_RETENTION_MS};
use ringfence::verify::Status;

use crate::backend::each_backend;
use crate::fixtures::{mobile, PHONE, PHONE_2, SECOND, T0, TTL, WRONG};

#[tokio::test]
async fn sweep_expires_forgets_and_unlocks() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let strict = b
            .service("strict", |c| {
                c.max_check_attempts = 1;
                c.lockout_seconds = 60;
            })
            .await;
        let forgotten = b
            .start(&svc, PHONE)
            .idempotency("key-1", "first", 1)
            .started()
            .await;
        let alive = b.start(&svc, PHONE_2).at(T0 + 100 * SECOND).started().await;
        let locked = b.start(&strict, &mobile(1)).started().await;
        b.check(&locked.id, WRONG, T0).await; // locked out until T0 + 60 s

        let now = T0 + TTL;
        let report = b.store.sweep(now, T0 + 1, 100).await.unwrap();
        assert_eq!(
            report,
            SweepReport {
                expired: 1,
                idempotency_keys: 1,
                lockouts: 1,
                guess_budgets: 0,
                tombstones: 0,
            }
        );
        assert_eq!(b.status(&forgotten.id).await, Status::Expired);
        assert!(!b.inspect.has_code_hash(&forgotten.id).await, "code hash erased");
        assert_eq!(b.message_statuses(&forgotten.id).await, ["expired"]);
        assert!(!b.inspect.outbox(&forgotten.id).await[0].has_payload);
        assert_eq!(b.status(&alive.id).await, Status::Pending, "not yet expired");
        assert!(b.inspect.has_code_hash(&alive.id).await);

        assert_eq!(
            b.store.sweep(now, T0 + 1, 100).await.unwrap(),
            SweepReport::default(),
            "a second pass finds nothing"
        );
        // The forgotten key now starts afresh instead of replaying.
        let out = b
            .start(&svc, PHONE)
            .at(now)
            .idempotency("key-1", "first", 1)
            .send()
            .await;
        assert!(
            matches!(&out, StartOutcome::Started { verification, resent: false, .. } if verification.id != forgotten.id),
            "got {out:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn sweep_does_at_most_its_limit_per_call() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let mut ids = Vec::new();
        for n in 0..3 {
            let v = b
                .start(&svc, &mobile(n))
                .at(T0 + i64::from(n))
                .idempotency("key-1", &format!("k{n}"), 1)
                .started()
                .await;
            ids.push(v.id);
        }
        let now = T0 + TTL + SECOND;
        let first = b.store.sweep(now, now, 2).await.unwrap();
        assert_eq!((first.expired, first.idempotency_keys), (2, 2));
        // The oldest expire first.
        assert_eq!(b.status(&ids[0]).await, Status::Expired);
        assert_eq!(b.status(&ids[1]).await, Status::Expired);
        assert_eq!(b.status(&ids[2]).await, Status::Pending);

        let second = b.store.sweep(now, now, 2).await.unwrap();
        assert_eq!((second.expired, second.idempotency_keys), (1, 1));
        assert_eq!(b.status(&ids[2]).await, Status::Expired);
        assert_eq!(b.inspect.counts().await.idempotency_keys, 0);
    })
    .await;
}

/// Ended bindings stay as tombstones (the accounts cap counts them) for the retention
/// period, then go; live bindings stay whatever their age.
#[tokio::test]
async fn tombstones_go_after_their_retention_and_live_bindings_stay() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let rules = BindRules {
            approval_window_ms: 600 * SECOND,
            max_accounts: 10,
            cap_window_ms: TOMBSTONE_RETENTION_MS,
            one_verified_holder: false,
        };
        for (n, account) in ["ended", "live"].iter().enumerate() {
            let v = b.approved(&svc, &mobile(n as u32), None, T0).await;
            b.store
                .bind_account(account, &v.id, T0 + SECOND, rules)
                .await
                .unwrap();
        }
        assert!(b
            .store
            .unbind_account("ended", T0 + 2 * SECOND)
            .await
            .unwrap());
        let just_before = b
            .store
            .sweep(T0 + TOMBSTONE_RETENTION_MS, T0, 100)
            .await
            .unwrap();
        assert_eq!(just_before.tombstones, 0);
        let after = b
            .store
            .sweep(T0 + TOMBSTONE_RETENTION_MS + 2 * SECOND, T0, 100)
            .await
            .unwrap();
        assert_eq!(after.tombstones, 1);
        assert!(b.store.get_binding("live").await.unwrap().is_some());
    })
    .await;
}
