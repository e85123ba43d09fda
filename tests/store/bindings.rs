//! Account bindings: what may be bound, idempotent rebinding, replacement, unbinding.

use ringfence::clock::Millis;
use ringfence::store::{BindOutcome, BindRules, BindingRow};

use crate::backend::each_backend;
use crate::fixtures::{PHONE, PHONE_2, SECOND, T0};

/// How long after approval a verification may be bound.
const WINDOW: Millis = 600 * SECOND;
const DAY: Millis = 24 * 3600 * SECOND;

/// No cap to speak of: the tests of the cap set their own.
const RULES: BindRules = BindRules {
    approval_window_ms: WINDOW,
    max_accounts: 1000,
    cap_window_ms: 90 * DAY,
    one_verified_holder: false,
};

#[track_caller]
fn bound(out: BindOutcome, replaced_expected: bool) -> BindingRow {
    match out {
        BindOutcome::Bound {
            binding, replaced, ..
        } => {
            assert_eq!(replaced, replaced_expected, "replaced");
            binding
        }
        other => panic!("expected a binding, got {other:?}"),
    }
}

#[track_caller]
fn assert_same_binding(actual: &BindingRow, expected: &BindingRow) {
    assert_eq!(actual.account_ref, expected.account_ref);
    assert_eq!(actual.verification_id, expected.verification_id);
    assert_eq!(actual.verified_at, expected.verified_at);
    assert_eq!(actual.subject.id, expected.subject.id);
    assert_eq!(actual.subject.blind_index, expected.subject.blind_index);
}

#[tokio::test]
async fn an_approved_verification_binds_within_the_window() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.approved(&svc, PHONE, None, T0).await;
        let approved_at = v.approved_at.expect("approved");

        let out = b
            .store
            .bind_account("acct-1", &v.id, approved_at + 60 * SECOND, RULES)
            .await
            .unwrap();
        let binding = bound(out, false);
        assert_eq!(binding.account_ref, "acct-1");
        assert_eq!(binding.verification_id, v.id);
        assert_eq!(binding.verified_at, approved_at, "verified when approved");
        assert_eq!(binding.subject.id, v.subject_id);
        assert_eq!(b.phone_of(&binding.subject), PHONE);

        let got = b.store.get_binding("acct-1").await.unwrap().expect("bound");
        assert_same_binding(&got, &binding);
        assert!(b.store.get_binding("acct-2").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn the_window_ends_binding() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.approved(&svc, PHONE, None, T0).await;
        let approved_at = v.approved_at.expect("approved");

        let out = b
            .store
            .bind_account("acct-1", &v.id, approved_at + WINDOW + 1, RULES)
            .await
            .unwrap();
        assert!(matches!(out, BindOutcome::Stale), "got {out:?}");
        assert!(b.store.get_binding("acct-1").await.unwrap().is_none());

        // The window's last millisecond still counts.
        let out = b
            .store
            .bind_account("acct-1", &v.id, approved_at + WINDOW, RULES)
            .await
            .unwrap();
        bound(out, false);
    })
    .await;
}

#[tokio::test]
async fn only_an_approved_verification_binds() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let out = b
            .store
            .bind_account("acct-1", "VE-none", T0, RULES)
            .await
            .unwrap();
        assert!(
            matches!(out, BindOutcome::VerificationNotFound),
            "got {out:?}"
        );

        let pending = b.start(&svc, PHONE).started().await;
        let out = b
            .store
            .bind_account("acct-1", &pending.id, T0 + SECOND, RULES)
            .await
            .unwrap();
        assert!(matches!(out, BindOutcome::NotApproved), "got {out:?}");

        b.store
            .cancel_verification(&pending.id, T0 + SECOND)
            .await
            .unwrap();
        let out = b
            .store
            .bind_account("acct-1", &pending.id, T0 + 2 * SECOND, RULES)
            .await
            .unwrap();
        assert!(matches!(out, BindOutcome::NotApproved), "got {out:?}");
        assert!(b.store.get_binding("acct-1").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn a_verification_started_for_an_account_binds_only_that_account() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.approved(&svc, PHONE, Some("acct-1"), T0).await;
        let now = T0 + 10 * SECOND;

        let out = b
            .store
            .bind_account("acct-2", &v.id, now, RULES)
            .await
            .unwrap();
        assert!(matches!(out, BindOutcome::AccountMismatch), "got {out:?}");
        assert!(b.store.get_binding("acct-2").await.unwrap().is_none());

        let out = b
            .store
            .bind_account("acct-1", &v.id, now, RULES)
            .await
            .unwrap();
        assert_eq!(bound(out, false).account_ref, "acct-1");
    })
    .await;
}

#[tokio::test]
async fn binding_the_same_number_again_is_idempotent() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let first = b.approved(&svc, PHONE, None, T0).await;
        let now = T0 + 10 * SECOND;
        let binding = bound(
            b.store
                .bind_account("acct-1", &first.id, now, RULES)
                .await
                .unwrap(),
            false,
        );

        let again = bound(
            b.store
                .bind_account("acct-1", &first.id, now + SECOND, RULES)
                .await
                .unwrap(),
            false,
        );
        assert_same_binding(&again, &binding);

        // A later verification of the same number leaves the binding as it was.
        let later = b.approved(&svc, PHONE, None, now + 2 * SECOND).await;
        let again = bound(
            b.store
                .bind_account("acct-1", &later.id, now + 4 * SECOND, RULES)
                .await
                .unwrap(),
            false,
        );
        assert_same_binding(&again, &binding);
        let got = b.store.get_binding("acct-1").await.unwrap().expect("bound");
        assert_same_binding(&got, &binding);
    })
    .await;
}

#[tokio::test]
async fn binding_another_number_replaces_the_binding() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let first = b.approved(&svc, PHONE, None, T0).await;
        let second = b.approved(&svc, PHONE_2, None, T0).await;
        let now = T0 + 10 * SECOND;
        bound(
            b.store
                .bind_account("acct-1", &first.id, now, RULES)
                .await
                .unwrap(),
            false,
        );

        let binding = bound(
            b.store
                .bind_account("acct-1", &second.id, now + SECOND, RULES)
                .await
                .unwrap(),
            true,
        );
        assert_eq!(binding.verification_id, second.id);
        assert_eq!(binding.subject.id, second.subject_id);
        assert_eq!(b.phone_of(&binding.subject), PHONE_2);
        let got = b.store.get_binding("acct-1").await.unwrap().expect("bound");
        assert_same_binding(&got, &binding);
    })
    .await;
}

#[tokio::test]
async fn unbinding_works_once() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.approved(&svc, PHONE, None, T0).await;
        let now = T0 + 10 * SECOND;
        bound(
            b.store
                .bind_account("acct-1", &v.id, now, RULES)
                .await
                .unwrap(),
            false,
        );

        assert!(b
            .store
            .unbind_account("acct-1", now + SECOND)
            .await
            .unwrap());
        assert!(b.store.get_binding("acct-1").await.unwrap().is_none());
        assert!(
            !b.store
                .unbind_account("acct-1", now + 2 * SECOND)
                .await
                .unwrap(),
            "a second unbind finds nothing to end"
        );
        assert!(!b.store.unbind_account("acct-none", now).await.unwrap());

        // An ended binding does not count as a current one.
        let rebound = bound(
            b.store
                .bind_account("acct-1", &v.id, now + 3 * SECOND, RULES)
                .await
                .unwrap(),
            false,
        );
        assert_eq!(rebound.verification_id, v.id);
    })
    .await;
}

/// Three accounts per number within the window, ended bindings counted: unbinding
/// (or deleting an account) does not give a place back until the window has passed.
#[tokio::test]
async fn the_accounts_cap_counts_tombstones_within_its_window() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let cap = BindRules {
            max_accounts: 3,
            ..RULES
        };
        let mut now = T0;
        for n in 1..=3 {
            let v = b.approved(&svc, PHONE, None, now).await;
            let out = b
                .store
                .bind_account(&format!("acct-{n}"), &v.id, now + SECOND, cap)
                .await
                .unwrap();
            bound(out, false);
            // The account goes away; its binding stays as a tombstone.
            assert!(b
                .store
                .unbind_account(&format!("acct-{n}"), now + 2 * SECOND)
                .await
                .unwrap());
            now += 3600 * SECOND;
        }
        let v = b.approved(&svc, PHONE, None, now).await;
        let out = b
            .store
            .bind_account("acct-4", &v.id, now + SECOND, cap)
            .await
            .unwrap();
        assert!(matches!(out, BindOutcome::PhoneLimitReached), "got {out:?}");
        // An account bound before may bind the number again: it is not another account.
        let out = b
            .store
            .bind_account("acct-2", &v.id, now + SECOND, cap)
            .await
            .unwrap();
        bound(out, false);
        // Another number is not affected.
        let w = b.approved(&svc, PHONE_2, None, now).await;
        bound(
            b.store
                .bind_account("acct-4", &w.id, now + SECOND, cap)
                .await
                .unwrap(),
            false,
        );
        // Once the first binding is older than the window, a place is free again.
        let later = T0 + 90 * DAY + SECOND;
        let v = b.approved(&svc, PHONE, None, later).await;
        bound(
            b.store
                .bind_account("acct-5", &v.id, later + SECOND, cap)
                .await
                .unwrap(),
            false,
        );
    })
    .await;
}

/// Recycled numbers: in one-verified-holder mode the new holder takes the number over.
#[tokio::test]
async fn a_new_verified_holder_supersedes_the_earlier_bindings() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let holder = BindRules {
            one_verified_holder: true,
            ..RULES
        };
        let v = b.approved(&svc, PHONE, None, T0).await;
        bound(
            b.store
                .bind_account("old", &v.id, T0 + SECOND, holder)
                .await
                .unwrap(),
            false,
        );
        let later = T0 + 400 * DAY;
        let w = b.approved(&svc, PHONE, None, later).await;
        match b
            .store
            .bind_account("new", &w.id, later + SECOND, holder)
            .await
            .unwrap()
        {
            BindOutcome::Bound { superseded, .. } => assert_eq!(superseded, 1),
            other => panic!("expected a binding, got {other:?}"),
        }
        assert!(
            b.store.get_binding("old").await.unwrap().is_none(),
            "superseded"
        );
        assert!(b.store.get_binding("new").await.unwrap().is_some());
    })
    .await;
}
