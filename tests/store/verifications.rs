//! Reading verifications (`get_verification`, `find_pending`) and canceling them.

use ringfence::store::{CancelOutcome, CheckOutcome};
use ringfence::verify::{Channel, Status, VerifyError};

use crate::backend::each_backend;
use crate::fixtures::{assert_same_row, CODE, PHONE, PHONE_2, SECOND, T0};

const LEASE: i64 = 30 * SECOND;

#[tokio::test]
async fn get_verification_returns_the_row_its_subject_and_its_messages() {
    each_backend(|b| async move {
        let svc = b
            .service("signup", |c| {
                c.channels = vec![Channel::Sms, Channel::Voice]
            })
            .await;
        assert!(b.store.get_verification("VE-none").await.unwrap().is_none());

        b.start(&svc, PHONE).account("acct-1").started().await;
        let resend_at = T0 + 30 * SECOND;
        let v = b
            .start(&svc, PHONE)
            .channel(Channel::Voice)
            .at(resend_at)
            .resent()
            .await;

        let d = b.details(&v.id).await;
        assert_same_row(&d.row, &v);
        assert_eq!(d.row.channel, Channel::Voice, "the latest send's channel");
        assert_eq!(d.row.account_ref.as_deref(), Some("acct-1"));
        assert_eq!(d.subject.id, v.subject_id);
        assert_eq!(d.subject.blind_index, b.blind(PHONE));
        assert_eq!(b.phone_of(&d.subject), PHONE);
        let sends: Vec<_> = d
            .sends
            .iter()
            .map(|s| (s.channel, s.status.as_str(), s.created_at))
            .collect();
        assert_eq!(
            sends,
            [
                (Channel::Sms, "canceled", T0),
                (Channel::Voice, "queued", resend_at)
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn find_pending_sees_only_a_live_pending_verification() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let other = b.service("login", |_| {}).await;
        let bi = b.blind(PHONE);
        assert_eq!(b.store.find_pending(&bi, &svc.id, T0).await.unwrap(), None);

        let v = b.start(&svc, PHONE).started().await;
        let found = b.store.find_pending(&bi, &svc.id, T0).await.unwrap();
        assert_eq!(found.as_deref(), Some(v.id.as_str()));
        let found = b
            .store
            .find_pending(&bi, &svc.id, v.expires_at - 1)
            .await
            .unwrap();
        assert_eq!(found.as_deref(), Some(v.id.as_str()));

        assert_eq!(
            b.store.find_pending(&bi, &other.id, T0).await.unwrap(),
            None
        );
        let bi_2 = b.blind(PHONE_2);
        assert_eq!(
            b.store.find_pending(&bi_2, &svc.id, T0).await.unwrap(),
            None
        );
        // Past expiry it is not pending any more, before anything wrote that down.
        assert_eq!(
            b.store
                .find_pending(&bi, &svc.id, v.expires_at)
                .await
                .unwrap(),
            None
        );

        b.check(&v.id, CODE, T0 + SECOND).await;
        assert_eq!(
            b.store
                .find_pending(&bi, &svc.id, T0 + SECOND)
                .await
                .unwrap(),
            None,
            "an approved verification is not pending"
        );
    })
    .await;
}

#[tokio::test]
async fn cancel_ends_a_pending_verification_and_erases_its_messages() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;
        let now = T0 + 5 * SECOND;

        let out = b.store.cancel_verification(&v.id, now).await.unwrap();
        let CancelOutcome::Canceled(row) = out else {
            panic!("expected a cancellation, got {out:?}");
        };
        assert_eq!(row.id, v.id);
        assert_eq!(row.status, Status::Canceled);
        assert_eq!(row.updated_at, now);
        assert_eq!(b.status(&v.id).await, Status::Canceled);

        assert_eq!(b.message_statuses(&v.id).await, ["canceled"]);
        let messages = b.inspect.outbox(&v.id).await;
        assert!(!messages[0].has_payload, "the queued content is erased");
        assert!(
            !b.inspect.has_code_hash(&v.id).await,
            "the code hash is erased"
        );
        let claim = b.store.claim_outbox(now, 10, LEASE).await.unwrap();
        assert!(claim.items.is_empty(), "nothing is sent for it");
        assert_eq!(b.store.next_outbox_due().await.unwrap(), None);

        assert_eq!(
            b.store
                .find_pending(&b.blind(PHONE), &svc.id, now)
                .await
                .unwrap(),
            None
        );
        let out = b.check(&v.id, CODE, now).await;
        assert!(
            matches!(
                out,
                CheckOutcome::Refused {
                    why: VerifyError::NotPending(Status::Canceled),
                    ..
                }
            ),
            "got {out:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn cancel_refuses_what_is_not_pending() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let other = b.service("login", |_| {}).await;

        let canceled = b.start(&svc, PHONE).started().await;
        b.store
            .cancel_verification(&canceled.id, T0 + SECOND)
            .await
            .unwrap();
        let out = b
            .store
            .cancel_verification(&canceled.id, T0 + 2 * SECOND)
            .await
            .unwrap();
        let CancelOutcome::NotPending(row) = out else {
            panic!("expected not pending, got {out:?}");
        };
        assert_eq!(row.status, Status::Canceled);
        assert_eq!(
            row.updated_at,
            T0 + SECOND,
            "the second cancel changed nothing"
        );

        let approved = b.approved(&other, PHONE, None, T0).await;
        let out = b
            .store
            .cancel_verification(&approved.id, T0 + 2 * SECOND)
            .await
            .unwrap();
        assert!(
            matches!(&out, CancelOutcome::NotPending(row) if row.status == Status::Approved),
            "got {out:?}"
        );

        // Past expiry, before anything recorded it: not pending, and reads as expired.
        let late = b.start(&svc, PHONE_2).started().await;
        let out = b
            .store
            .cancel_verification(&late.id, late.expires_at)
            .await
            .unwrap();
        let CancelOutcome::NotPending(row) = out else {
            panic!("expected not pending, got {out:?}");
        };
        assert_eq!(
            row.status.effective(row.expires_at, late.expires_at),
            Status::Expired
        );

        let out = b.store.cancel_verification("VE-none", T0).await.unwrap();
        assert!(matches!(out, CancelOutcome::NotFound), "got {out:?}");
    })
    .await;
}
