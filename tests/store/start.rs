//! Starting verifications: new and known numbers, idempotent retries, resends and their
//! limits, stale verifications, lockouts and test numbers.

use ringfence::delivery::Payload;
use ringfence::store::StartOutcome;
use ringfence::verify::{Channel, Status, VerifyError};

use crate::backend::each_backend;
use crate::fixtures::{assert_same_row, mobile, CODE, PHONE, PHONE_2, SECOND, T0, TTL, WRONG};

const LEASE: i64 = 30 * SECOND;

#[tokio::test]
async fn a_new_number_gets_a_subject_a_verification_and_a_message() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let p = b
            .start(&svc, PHONE)
            .account("acct-1")
            .purpose("signup")
            .locale("en")
            .prepare();
        let id = p.cmd.id_if_new.clone();
        let wrapped_key = p.cmd.new_subject.wrapped_key.clone();
        let phone_ct = p.cmd.new_subject.phone_ct.clone();
        let resealed = p.resealed.clone();

        let out = b.store.start_verification(p.cmd).await.unwrap();
        let StartOutcome::Started {
            verification: v,
            resent: false,
            ..
        } = out
        else {
            panic!("expected a new verification, got {out:?}");
        };
        assert!(
            !resealed.load(std::sync::atomic::Ordering::SeqCst),
            "a new number needs no resealing"
        );
        assert_eq!(v.id, id, "the verification takes the caller's id");
        assert_eq!(v.service_id, svc.id);
        assert_eq!(v.status, Status::Pending);
        assert_eq!(v.channel, Channel::Sms);
        assert_eq!(v.locale.as_deref(), Some("en"));
        assert_eq!(v.account_ref.as_deref(), Some("acct-1"));
        assert_eq!(v.purpose.as_deref(), Some("signup"));
        assert_eq!((v.sends, v.max_sends), (1, 5));
        assert_eq!((v.attempts, v.max_attempts), (0, 5));
        assert!(!v.test_number);
        assert_eq!((v.created_at, v.updated_at), (T0, T0));
        assert_eq!(v.expires_at, T0 + TTL);
        assert_eq!(v.approved_at, None);

        // The subject holds exactly the material the caller sealed.
        let d = b.details(&id).await;
        assert_same_row(&d.row, &v);
        assert_eq!(d.subject.id, v.subject_id);
        assert_eq!(d.subject.blind_index, b.blind(PHONE));
        assert_eq!(d.subject.wrapped_key.as_ref(), Some(&wrapped_key));
        assert_eq!(d.subject.phone_ct.as_ref(), Some(&phone_ct));
        assert_eq!(b.phone_of(&d.subject), PHONE);

        // One message, queued in the same transaction.
        assert_eq!(d.sends.len(), 1);
        assert_eq!(d.sends[0].channel, Channel::Sms);
        assert_eq!(d.sends[0].status, "queued");
        assert_eq!(d.sends[0].created_at, T0);
        let claim = b.store.claim_outbox(T0, 10, LEASE).await.unwrap();
        assert_eq!(claim.items.len(), 1);
        let msg = b.open_message(&claim.items[0]);
        assert_eq!(msg.to, PHONE);
        assert!(msg.body.contains(CODE), "the message carries the code");
    })
    .await;
}

#[tokio::test]
async fn a_known_number_is_sealed_again_under_its_own_key() {
    each_backend(|b| async move {
        let first_svc = b.service("first", |_| {}).await;
        let second_svc = b.service("second", |_| {}).await;
        let first = b.start(&first_svc, PHONE).started().await;
        let subject_before = b.details(&first.id).await.subject;

        // Same number on another service: the store must use the reseal closure, not the
        // fresh key and ciphertexts the command also carries.
        let p = b
            .start(&second_svc, PHONE)
            .code("654321")
            .at(T0 + SECOND)
            .prepare();
        let (fresh_key, resealed) = (p.fresh_key.clone(), p.resealed.clone());
        let out = b.store.start_verification(p.cmd).await.unwrap();
        let StartOutcome::Started {
            verification: second,
            resent: false,
            ..
        } = out
        else {
            panic!("expected a new verification, got {out:?}");
        };
        assert!(resealed.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(
            second.subject_id, first.subject_id,
            "one subject per number"
        );

        let subject = b.details(&second.id).await.subject;
        assert_eq!(
            subject.wrapped_key, subject_before.wrapped_key,
            "key unchanged"
        );
        assert_eq!(
            subject.phone_ct, subject_before.phone_ct,
            "number unchanged"
        );
        assert_eq!(b.phone_of(&subject), PHONE);
        assert_eq!(b.inspect.counts().await.subjects, 1);

        // The new message opens under the subject's key, not under the fresh one.
        let claim = b.store.claim_outbox(T0 + SECOND, 10, LEASE).await.unwrap();
        let item = claim
            .items
            .iter()
            .find(|i| i.verification_id == second.id)
            .expect("the second verification's message");
        let msg = b.open_message(item);
        assert_eq!(msg.to, PHONE);
        assert!(msg.body.contains("654321"));
        assert!(
            Payload::open(&fresh_key, &item.subject.blind_index, &item.payload).is_none(),
            "the message must not be sealed under the unused fresh key"
        );
    })
    .await;
}

#[tokio::test]
async fn an_idempotent_retry_replays_the_first_start_and_writes_nothing() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let first = b
            .start(&svc, PHONE)
            .idempotency("key-1", "retry-me", 1)
            .started()
            .await;
        let before = b.inspect.counts().await;

        // Later than the cooldown: without the key this would be a resend.
        let out = b
            .start(&svc, PHONE)
            .code("999999")
            .at(T0 + 60 * SECOND)
            .idempotency("key-1", "retry-me", 1)
            .send()
            .await;
        let StartOutcome::Replayed(row) = out else {
            panic!("expected a replay, got {out:?}");
        };
        assert_same_row(&row, &first);
        assert_eq!(b.inspect.counts().await, before, "a replay writes nothing");
        assert_eq!(
            b.details(&first.id).await.sends.len(),
            1,
            "and sends nothing"
        );
    })
    .await;
}

#[tokio::test]
async fn idempotency_keys_belong_to_one_api_key() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let first = b
            .start(&svc, PHONE)
            .idempotency("key-1", "same", 1)
            .started()
            .await;
        let other = b
            .start(&svc, PHONE_2)
            .idempotency("key-2", "same", 1)
            .started()
            .await;
        assert_ne!(other.id, first.id, "another API key's retry key is its own");
    })
    .await;
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_request_is_refused() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        b.start(&svc, PHONE)
            .idempotency("key-1", "reused", 1)
            .started()
            .await;
        let before = b.inspect.counts().await;
        let out = b
            .start(&svc, PHONE_2)
            .idempotency("key-1", "reused", 2)
            .send()
            .await;
        assert!(
            matches!(out, StartOutcome::IdempotencyMismatch),
            "got {out:?}"
        );
        assert_eq!(
            b.inspect.counts().await,
            before,
            "a refused start writes nothing"
        );
    })
    .await;
}

#[tokio::test]
async fn a_resend_waits_for_the_cooldown_then_reuses_the_verification() {
    each_backend(|b| async move {
        // Default service: 30 s between sends.
        let svc = b.service("signup", |_| {}).await;
        let first = b.start(&svc, PHONE).code("111111").started().await;

        let out = b
            .start(&svc, PHONE)
            .code("222222")
            .at(T0 + 10 * SECOND)
            .send()
            .await;
        assert!(
            matches!(
                out,
                StartOutcome::Refused(VerifyError::ResendCooldown {
                    retry_after_ms: 20_000
                })
            ),
            "got {out:?}"
        );
        assert_eq!(b.message_statuses(&first.id).await, ["queued"]);

        let at = T0 + 30 * SECOND;
        let again = b.start(&svc, PHONE).code("333333").at(at).resent().await;
        assert_eq!(again.id, first.id, "a resend keeps the verification");
        assert_eq!(again.sends, 2);
        assert_eq!(again.created_at, T0);
        assert_eq!(again.updated_at, at);
        assert_eq!(
            again.expires_at,
            at + TTL,
            "a new code gets a full lifetime"
        );
        assert_same_row(&b.details(&first.id).await.row, &again);

        // The superseded message is never sent; only the new code's message is due.
        assert_eq!(b.message_statuses(&first.id).await, ["canceled", "queued"]);
        let claim = b.store.claim_outbox(at, 10, LEASE).await.unwrap();
        assert_eq!(claim.items.len(), 1);
        assert!(b.open_message(&claim.items[0]).body.contains("333333"));

        // The old code no longer works; the new one does.
        assert!(matches!(
            b.check(&first.id, "111111", at + SECOND).await,
            ringfence::store::CheckOutcome::Wrong {
                attempts_left: 4,
                ..
            }
        ));
        assert!(matches!(
            b.check(&first.id, "333333", at + SECOND).await,
            ringfence::store::CheckOutcome::Approved(_)
        ));
    })
    .await;
}

#[tokio::test]
async fn sends_stop_at_max_sends() {
    each_backend(|b| async move {
        let svc = b
            .service("signup", |c| {
                c.max_sends = 2;
                c.resend_cooldown_seconds = 0;
            })
            .await;
        let first = b.start(&svc, PHONE).started().await;
        let second = b.start(&svc, PHONE).at(T0 + SECOND).resent().await;
        assert_eq!((second.id.as_str(), second.sends), (first.id.as_str(), 2));

        let now = T0 + 2 * SECOND;
        let out = b.start(&svc, PHONE).at(now).send().await;
        let StartOutcome::Refused(VerifyError::MaxSendsReached { retry_after_ms }) = out else {
            panic!("expected max sends reached, got {out:?}");
        };
        assert_eq!(
            retry_after_ms,
            second.expires_at - now,
            "until the last code expires"
        );
        assert_eq!(b.details(&first.id).await.row.sends, 2);
        assert_eq!(b.message_statuses(&first.id).await.len(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_start_after_expiry_replaces_the_stale_verification() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let stale = b.start(&svc, PHONE).started().await;

        let fresh = b.start(&svc, PHONE).at(stale.expires_at).started().await;
        assert_ne!(fresh.id, stale.id, "a new verification, not a resend");
        assert_eq!(fresh.sends, 1);
        assert_eq!(fresh.subject_id, stale.subject_id);

        assert_eq!(b.status(&stale.id).await, Status::Expired);
        assert!(
            !b.inspect.has_code_hash(&stale.id).await,
            "its code hash is erased"
        );
        let old_messages = b.inspect.outbox(&stale.id).await;
        assert_eq!(old_messages.len(), 1);
        assert_eq!(old_messages[0].status, "expired");
        assert!(
            !old_messages[0].has_payload,
            "its message content is erased"
        );

        let pending = b
            .store
            .find_pending(&b.blind(PHONE), &svc.id, stale.expires_at)
            .await
            .unwrap();
        assert_eq!(pending.as_deref(), Some(fresh.id.as_str()));
    })
    .await;
}

#[tokio::test]
async fn a_lockout_refuses_starts_on_its_service_until_it_ends() {
    each_backend(|b| async move {
        let svc = b
            .service("signup", |c| {
                c.max_check_attempts = 2;
                c.lockout_seconds = 900;
            })
            .await;
        let other = b.service("login", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;
        b.check(&v.id, WRONG, T0 + SECOND).await;
        b.check(&v.id, WRONG, T0 + 2 * SECOND).await;
        let locked_until = T0 + 2 * SECOND + 900 * SECOND;

        let out = b.start(&svc, PHONE).at(T0 + 3 * SECOND).send().await;
        assert!(
            matches!(
                out,
                StartOutcome::Refused(VerifyError::LockedOut {
                    retry_after_ms: 899_000
                })
            ),
            "got {out:?}"
        );
        // Another number on the same service, and the same number on another service,
        // are not locked.
        b.start(&svc, PHONE_2).at(T0 + 3 * SECOND).started().await;
        b.start(&other, PHONE).at(T0 + 3 * SECOND).started().await;

        let out = b.start(&svc, PHONE).at(locked_until - 1).send().await;
        assert!(
            matches!(
                out,
                StartOutcome::Refused(VerifyError::LockedOut { retry_after_ms: 1 })
            ),
            "got {out:?}"
        );
        let after = b.start(&svc, PHONE).at(locked_until).started().await;
        assert_ne!(after.id, v.id);
    })
    .await;
}

#[tokio::test]
async fn a_test_number_queues_no_message() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, &mobile(42)).test_number().started().await;
        assert!(v.test_number);
        assert!(b.details(&v.id).await.sends.is_empty());
        assert_eq!(b.store.next_outbox_due().await.unwrap(), None);
        let claim = b.store.claim_outbox(T0, 10, LEASE).await.unwrap();
        assert!(claim.items.is_empty());
        assert!(matches!(
            b.check(&v.id, CODE, T0 + SECOND).await,
            ringfence::store::CheckOutcome::Approved(_)
        ));
    })
    .await;
}

#[tokio::test]
async fn raising_max_sends_does_not_extend_a_started_verification() {
    each_backend(|b| async move {
        let svc = b
            .service("signup", |c| {
                c.max_sends = 2;
                c.resend_cooldown_seconds = 0;
            })
            .await;
        let v = b.start(&svc, PHONE).code("111111").started().await;
        b.start(&svc, PHONE)
            .code("222222")
            .at(T0 + SECOND)
            .resent()
            .await;

        // The service now allows more sends; the verification keeps the limit it was
        // started with (`max_sends` on its row), as it keeps its attempt limit.
        let mut raised = (*svc.config).clone();
        raised.max_sends = 5;
        let svc = b
            .store
            .update_service(&svc.id, raised, T0 + 2 * SECOND)
            .await
            .unwrap()
            .expect("service exists");
        let out = b
            .start(&svc, PHONE)
            .code("333333")
            .at(T0 + 3 * SECOND)
            .send()
            .await;
        let stored = b.details(&v.id).await;
        assert!(
            matches!(
                out,
                StartOutcome::Refused(VerifyError::MaxSendsReached { .. })
            ),
            "got {out:?}; stored sends = {}, messages = {:?}",
            stored.row.sends,
            stored.sends.iter().map(|s| &s.status).collect::<Vec<_>>()
        );
        assert_eq!(stored.row.sends, 2);
        assert_eq!(b.message_statuses(&v.id).await, ["canceled", "queued"]);
        assert!(matches!(
            b.check(&v.id, "222222", T0 + 4 * SECOND).await,
            ringfence::store::CheckOutcome::Approved(_)
        ));
    })
    .await;
}
