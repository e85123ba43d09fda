//! The outbox as the delivery worker uses it: claim with a lease, expire instead of
//! sending late, record sent / retry / failed, and say when the next message is due.

use ringfence::store::{CheckOutcome, DeliveryResult, OutboxItem, StartOutcome};
use ringfence::verify::{Channel, Status};

use crate::backend::each_backend;
use crate::fixtures::{mobile, CODE, PHONE, PHONE_2, SECOND, T0, TTL};

const LEASE: i64 = 30 * SECOND;

#[track_caller]
fn only(items: Vec<OutboxItem>) -> OutboxItem {
    assert_eq!(items.len(), 1, "expected exactly one message: {items:?}");
    items.into_iter().next().expect("one message")
}

#[tokio::test]
async fn a_claim_hands_out_due_messages_with_content_that_opens() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let first = b.start(&svc, PHONE).code("111111").started().await;
        let second = b
            .start(&svc, PHONE_2)
            .code("222222")
            .at(T0 + SECOND)
            .started()
            .await;

        // At T0 only the first message is due.
        let claim = b.store.claim_outbox(T0, 10, LEASE).await.unwrap();
        assert_eq!(claim.expired, 0);
        let item = only(claim.items);
        assert_eq!(item.verification_id, first.id);
        assert_eq!(item.channel, Channel::Sms);
        assert_eq!(item.attempts, 1, "a claim counts an attempt");
        assert_eq!(
            item.not_after, first.expires_at,
            "never sent after the code expires"
        );
        assert_eq!(item.subject.id, first.subject_id);
        let msg = b.open_message(&item);
        assert_eq!(msg.to, PHONE);
        assert!(msg.body.contains("111111"));

        let item = only(
            b.store
                .claim_outbox(T0 + SECOND, 10, LEASE)
                .await
                .unwrap()
                .items,
        );
        assert_eq!(item.verification_id, second.id);
        let msg = b.open_message(&item);
        assert_eq!(msg.to, PHONE_2);
        assert!(msg.body.contains("222222"));

        let rows = b.inspect.outbox(&second.id).await;
        assert_eq!(rows[0].status, "sending");
        assert_eq!(rows[0].attempts, 1);
        assert_eq!(rows[0].lease_until, Some(T0 + SECOND + LEASE));
        assert_eq!(b.message_statuses(&second.id).await, ["sending"]);
    })
    .await;
}

#[tokio::test]
async fn a_claim_takes_at_most_its_limit_oldest_first() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let mut ids = Vec::new();
        for n in 0..3 {
            let v = b
                .start(&svc, &mobile(n))
                .at(T0 + i64::from(n) * SECOND)
                .started()
                .await;
            ids.push(v.id);
        }
        let now = T0 + 10 * SECOND;
        let claimed: Vec<String> = b
            .store
            .claim_outbox(now, 2, LEASE)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|i| i.verification_id)
            .collect();
        assert_eq!(claimed, ids[..2]);
        let rest = only(b.store.claim_outbox(now, 2, LEASE).await.unwrap().items);
        assert_eq!(rest.verification_id, ids[2]);
        assert!(b
            .store
            .claim_outbox(now, 2, LEASE)
            .await
            .unwrap()
            .items
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_claimed_message_is_claimed_again_only_once_its_lease_ends() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        b.start(&svc, PHONE).started().await;
        let first = only(b.store.claim_outbox(T0, 10, LEASE).await.unwrap().items);
        assert_eq!(b.store.next_outbox_due().await.unwrap(), Some(T0 + LEASE));

        let during = b
            .store
            .claim_outbox(T0 + LEASE - 1, 10, LEASE)
            .await
            .unwrap();
        assert!(
            during.items.is_empty(),
            "a leased message is not handed out twice"
        );

        // The worker died without a result: once the lease runs out, the message is
        // handed out again, content intact.
        let again = only(
            b.store
                .claim_outbox(T0 + LEASE, 10, LEASE)
                .await
                .unwrap()
                .items,
        );
        assert_eq!(again.id, first.id);
        assert_eq!(again.attempts, 2);
        assert!(b.open_message(&again).body.contains(CODE));
        assert_eq!(
            b.store.next_outbox_due().await.unwrap(),
            Some(T0 + 2 * LEASE)
        );
    })
    .await;
}

#[tokio::test]
async fn expired_messages_are_erased_and_counted_instead_of_claimed() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let queued = b.start(&svc, PHONE).started().await;
        let leased = b.start(&svc, PHONE_2).started().await;
        // Claim one of the two (the worker then died): one queued, one mid-lease.
        let claim = b.store.claim_outbox(T0, 1, 2 * TTL).await.unwrap();
        assert_eq!(claim.items.len(), 1);

        let claim = b
            .store
            .claim_outbox(queued.expires_at, 10, LEASE)
            .await
            .unwrap();
        assert!(
            claim.items.is_empty(),
            "nothing is sent after its code expired"
        );
        assert_eq!(claim.expired, 2);
        for v in [&queued, &leased] {
            let rows = b.inspect.outbox(&v.id).await;
            assert_eq!(rows[0].status, "expired");
            assert!(!rows[0].has_payload, "the content is erased");
            assert_eq!(b.message_statuses(&v.id).await, ["expired"]);
        }
        assert_eq!(b.store.next_outbox_due().await.unwrap(), None);

        let claim = b
            .store
            .claim_outbox(queued.expires_at, 10, LEASE)
            .await
            .unwrap();
        assert_eq!(claim.expired, 0, "each message is counted once");
    })
    .await;
}

#[tokio::test]
async fn a_sent_message_loses_its_content() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;
        let item = only(b.store.claim_outbox(T0, 10, LEASE).await.unwrap().items);

        let sent = DeliveryResult::Sent {
            provider_ref: Some("provider-1".into()),
        };
        b.store
            .finish_outbox(vec![(item.id, sent)], T0 + SECOND)
            .await
            .unwrap();
        assert_eq!(b.message_statuses(&v.id).await, ["sent"]);
        let rows = b.inspect.outbox(&v.id).await;
        assert!(!rows[0].has_payload, "the code is readable only in flight");
        assert_eq!(rows[0].lease_until, None);
        assert_eq!(b.store.next_outbox_due().await.unwrap(), None);
        let later = b
            .store
            .claim_outbox(T0 + 2 * LEASE, 10, LEASE)
            .await
            .unwrap();
        assert!(later.items.is_empty(), "a sent message is not sent again");

        assert_eq!(
            b.status(&v.id).await,
            Status::Pending,
            "sending decides nothing"
        );
        assert!(matches!(
            b.check(&v.id, CODE, T0 + 2 * SECOND).await,
            CheckOutcome::Approved(_)
        ));
    })
    .await;
}

#[tokio::test]
async fn a_retry_is_claimed_again_at_its_time() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;
        let item = only(b.store.claim_outbox(T0, 10, LEASE).await.unwrap().items);

        let at = T0 + 5 * SECOND;
        let retry = DeliveryResult::Retry {
            at,
            error: "provider busy".into(),
        };
        b.store
            .finish_outbox(vec![(item.id, retry)], T0 + SECOND)
            .await
            .unwrap();
        assert_eq!(b.message_statuses(&v.id).await, ["retry"]);
        let rows = b.inspect.outbox(&v.id).await;
        assert_eq!(rows[0].next_attempt_at, at);
        assert!(rows[0].has_payload, "a retry keeps the content");
        assert_eq!(b.store.next_outbox_due().await.unwrap(), Some(at));

        let early = b.store.claim_outbox(at - 1, 10, LEASE).await.unwrap();
        assert!(early.items.is_empty());
        let again = only(b.store.claim_outbox(at, 10, LEASE).await.unwrap().items);
        assert_eq!(again.id, item.id);
        assert_eq!(again.attempts, 2);
        assert!(b.open_message(&again).body.contains(CODE));
    })
    .await;
}

#[tokio::test]
async fn a_failed_message_fails_its_verification() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;
        let item = only(b.store.claim_outbox(T0, 10, LEASE).await.unwrap().items);

        let failed = DeliveryResult::Failed {
            error: "number unreachable".into(),
        };
        b.store
            .finish_outbox(vec![(item.id, failed)], T0 + SECOND)
            .await
            .unwrap();
        assert_eq!(b.message_statuses(&v.id).await, ["failed"]);
        assert!(!b.inspect.outbox(&v.id).await[0].has_payload);
        assert_eq!(b.status(&v.id).await, Status::Failed);
        assert!(
            !b.inspect.has_code_hash(&v.id).await,
            "the code hash is erased"
        );
        assert!(matches!(
            b.check(&v.id, CODE, T0 + 2 * SECOND).await,
            CheckOutcome::Refused { .. }
        ));
    })
    .await;
}

#[tokio::test]
async fn a_failed_resend_leaves_a_verification_whose_earlier_code_arrived() {
    each_backend(|b| async move {
        let svc = b.service("signup", |c| c.resend_cooldown_seconds = 0).await;
        let v = b.start(&svc, PHONE).code("111111").started().await;
        let first = only(b.store.claim_outbox(T0, 10, LEASE).await.unwrap().items);
        let sent = DeliveryResult::Sent { provider_ref: None };
        b.store
            .finish_outbox(vec![(first.id, sent)], T0 + SECOND)
            .await
            .unwrap();

        let at = T0 + 2 * SECOND;
        b.start(&svc, PHONE).code("222222").at(at).resent().await;
        let second = only(b.store.claim_outbox(at, 10, LEASE).await.unwrap().items);
        let failed = DeliveryResult::Failed {
            error: "number unreachable".into(),
        };
        b.store
            .finish_outbox(vec![(second.id, failed)], at + SECOND)
            .await
            .unwrap();

        assert_eq!(b.message_statuses(&v.id).await, ["sent", "failed"]);
        assert_eq!(
            b.status(&v.id).await,
            Status::Pending,
            "a message of it was delivered"
        );
    })
    .await;
}

#[tokio::test]
async fn one_finish_records_a_whole_round() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(b.start(&svc, &mobile(n)).started().await.id);
        }
        let items = b.store.claim_outbox(T0, 10, LEASE).await.unwrap().items;
        assert_eq!(items.len(), 3);
        let result_for = |vid: &str| match ids.iter().position(|i| i == vid) {
            Some(0) => DeliveryResult::Sent { provider_ref: None },
            Some(1) => DeliveryResult::Retry {
                at: T0 + 5 * SECOND,
                error: "busy".into(),
            },
            _ => DeliveryResult::Failed {
                error: "unreachable".into(),
            },
        };
        let results = items
            .iter()
            .map(|i| (i.id, result_for(&i.verification_id)))
            .collect();
        b.store.finish_outbox(results, T0 + SECOND).await.unwrap();

        assert_eq!(b.message_statuses(&ids[0]).await, ["sent"]);
        assert_eq!(b.message_statuses(&ids[1]).await, ["retry"]);
        assert_eq!(b.message_statuses(&ids[2]).await, ["failed"]);
        assert_eq!(b.status(&ids[2]).await, Status::Failed);
    })
    .await;
}

#[tokio::test]
async fn a_late_result_for_a_canceled_message_changes_nothing() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let v = b.start(&svc, PHONE).started().await;
        let item = only(b.store.claim_outbox(T0, 10, LEASE).await.unwrap().items);
        b.store
            .cancel_verification(&v.id, T0 + SECOND)
            .await
            .unwrap();

        let failed = DeliveryResult::Failed {
            error: "unreachable".into(),
        };
        b.store
            .finish_outbox(vec![(item.id, failed)], T0 + 2 * SECOND)
            .await
            .unwrap();
        assert_eq!(b.message_statuses(&v.id).await, ["canceled"]);
        assert_eq!(b.status(&v.id).await, Status::Canceled);
    })
    .await;
}

#[tokio::test]
async fn next_outbox_due_is_the_earliest_queued_message() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        assert_eq!(b.store.next_outbox_due().await.unwrap(), None);
        b.start(&svc, PHONE).at(T0 + 5 * SECOND).started().await;
        assert_eq!(
            b.store.next_outbox_due().await.unwrap(),
            Some(T0 + 5 * SECOND)
        );
        b.start(&svc, PHONE_2).at(T0 + 2 * SECOND).started().await;
        assert_eq!(
            b.store.next_outbox_due().await.unwrap(),
            Some(T0 + 2 * SECOND)
        );
    })
    .await;
}

#[tokio::test]
async fn a_message_queued_claimed_is_not_handed_out_until_its_lease_ends() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let out = b.start(&svc, PHONE).claimed_for(LEASE).send().await;
        let StartOutcome::Started {
            verification,
            claimed_message: Some(message_id),
            ..
        } = out
        else {
            panic!("expected a claimed message, got {out:?}");
        };
        let rows = b.inspect.outbox(&verification.id).await;
        assert_eq!(rows[0].status, "sending");
        assert_eq!(rows[0].attempts, 1, "the claim at queueing is attempt 1");
        assert_eq!(b.store.next_outbox_due().await.unwrap(), Some(T0 + LEASE));
        assert!(
            b.store
                .claim_outbox(T0 + LEASE - 1, 10, LEASE)
                .await
                .unwrap()
                .items
                .is_empty(),
            "the caller holds it: no worker may send it meanwhile"
        );

        // The caller sends and records it: nothing is left to claim.
        let sent = DeliveryResult::Sent { provider_ref: None };
        b.store
            .finish_outbox(vec![(message_id, sent)], T0 + SECOND)
            .await
            .unwrap();
        assert_eq!(b.message_statuses(&verification.id).await, ["sent"]);
        assert!(b
            .store
            .claim_outbox(T0 + LEASE, 10, LEASE)
            .await
            .unwrap()
            .items
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_message_queued_claimed_by_a_caller_that_died_is_sent_after_the_lease() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let out = b.start(&svc, PHONE).claimed_for(LEASE).send().await;
        let StartOutcome::Started {
            claimed_message: Some(message_id),
            ..
        } = out
        else {
            panic!("expected a claimed message, got {out:?}");
        };
        // Nobody recorded a result: once the lease ends a worker takes it, as attempt 2,
        // with its content intact.
        let again = only(
            b.store
                .claim_outbox(T0 + LEASE, 10, LEASE)
                .await
                .unwrap()
                .items,
        );
        assert_eq!(again.id, message_id);
        assert_eq!(again.attempts, 2);
        assert!(b.open_message(&again).body.contains(CODE));
    })
    .await;
}

#[tokio::test]
async fn without_a_claim_a_start_reports_no_claimed_message() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        let out = b.start(&svc, PHONE).send().await;
        assert!(
            matches!(
                out,
                StartOutcome::Started {
                    claimed_message: None,
                    ..
                }
            ),
            "got {out:?}"
        );
        let resend = b
            .start(&svc, PHONE)
            .at(T0 + 60 * SECOND)
            .claimed_for(LEASE)
            .send()
            .await;
        let StartOutcome::Started {
            resent: true,
            verification,
            claimed_message: Some(_),
        } = resend
        else {
            panic!("expected a claimed resend, got {resend:?}");
        };
        let statuses = b.message_statuses(&verification.id).await;
        assert_eq!(
            statuses,
            ["canceled", "sending"],
            "the first code's message is withdrawn"
        );
    })
    .await;
}
