//! Account bindings: what may be bound, idempotent rebinding, replacement, unbinding.

use ringfence::clock::Millis;
use ringfence::store::{BindOutcome, BindingRow};

use crate::backend::each_backend;
use crate::fixtures::{PHONE, PHONE_2, SECOND, T0};

/// How long after approval a verification may be bound.
const WINDOW: Millis = 600 * SECOND;

#[track_caller]
fn bound(out: BindOutcome, replaced_expected: bool) -> BindingRow {
    match out {
        BindOutcome::Bound { binding, replaced } => {
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
            .bind_account("acct-1", &v.id, approved_at + 60 * SECOND, WINDOW)
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
            .bind_account("acct-1", &v.id, approved_at + WINDOW + 1, WINDOW)
            .await
            .unwrap();
        assert!(matches!(out, BindOutcome::Stale), "got {out:?}");
        assert!(b.store.get_binding("acct-1").await.unwrap().is_none());

        // The window's last millisecond still counts.
        let out = b
            .store
            .bind_account("acct-1", &v.id, approved_at + WINDOW, WINDOW)
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
            .bind_account("acct-1", "VE-none", T0, WINDOW)
            .await
            .unwrap();
        assert!(
            matches!(out, BindOutcome::VerificationNotFound),
            "got {out:?}"
        );

        let pending = b.start(&svc, PHONE).started().await;
        let out = b
            .store
            .bind_account("acct-1", &pending.id, T0 + SECOND, WINDOW)
            .await
            .unwrap();
        assert!(matches!(out, BindOutcome::NotApproved), "got {out:?}");

        b.store
            .cancel_verification(&pending.id, T0 + SECOND)
            .await
            .unwrap();
        let out = b
            .store
            .bind_account("acct-1", &pending.id, T0 + 2 * SECOND, WINDOW)
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
            .bind_account("acct-2", &v.id, now, WINDOW)
            .await
            .unwrap();
        assert!(matches!(out, BindOutcome::AccountMismatch), "got {out:?}");
        assert!(b.store.get_binding("acct-2").await.unwrap().is_none());

        let out = b
            .store
            .bind_account("acct-1", &v.id, now, WINDOW)
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
                .bind_account("acct-1", &first.id, now, WINDOW)
                .await
                .unwrap(),
            false,
        );

        let again = bound(
            b.store
                .bind_account("acct-1", &first.id, now + SECOND, WINDOW)
                .await
                .unwrap(),
            false,
        );
        assert_same_binding(&again, &binding);

        // A later verification of the same number leaves the binding as it was.
        let later = b.approved(&svc, PHONE, None, now + 2 * SECOND).await;
        let again = bound(
            b.store
                .bind_account("acct-1", &later.id, now + 4 * SECOND, WINDOW)
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
                .bind_account("acct-1", &first.id, now, WINDOW)
                .await
                .unwrap(),
            false,
        );

        let binding = bound(
            b.store
                .bind_account("acct-1", &second.id, now + SECOND, WINDOW)
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
                .bind_account("acct-1", &v.id, now, WINDOW)
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
                .bind_account("acct-1", &v.id, now + 3 * SECOND, WINDOW)
                .await
                .unwrap(),
            false,
        );
        assert_eq!(rebound.verification_id, v.id);
    })
    .await;
}
