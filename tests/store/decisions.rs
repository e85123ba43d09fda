//! Anti-abuse records: decisions (recorded with an id, listed newest first, by reason
//! and service, page by page) and the operator's ban and safe lists.

use ringfence::store::{DecisionFilter, DecisionRecord};

use crate::backend::each_backend;
use crate::fixtures::{SECOND, T0};

fn decision(
    service: &str,
    reasons: &[&str],
    verification: Option<&str>,
    at: i64,
) -> DecisionRecord {
    DecisionRecord {
        id: 0,
        at,
        service_id: service.to_owned(),
        verification_id: verification.map(str::to_owned),
        action: if verification.is_some() {
            "shadow_block"
        } else {
            "block"
        }
        .to_owned(),
        reasons: reasons.iter().map(|r| r.to_string()).collect(),
        factors: r#"[{"name":"limit","value":"sends_per_ip"}]"#.to_owned(),
        channel: "sms".to_owned(),
        country_code: 44,
        region: Some("GB".to_owned()),
        number_type: "mobile".to_owned(),
    }
}

#[tokio::test]
async fn decisions_are_listed_newest_first_by_reason_service_and_page() {
    each_backend(|b| async move {
        let a = b
            .store
            .record_decision(decision("SVa", &["rate_limited"], None, T0))
            .await
            .unwrap();
        let c = b
            .store
            .record_decision(decision(
                "SVa",
                &["number_type_not_allowed"],
                None,
                T0 + SECOND,
            ))
            .await
            .unwrap();
        let d = b
            .store
            .record_decision(decision(
                "SVb",
                &["prefix_conversion_collapse", "rate_limited"],
                Some("VE0123"),
                T0 + 2 * SECOND,
            ))
            .await
            .unwrap();
        assert!(a < c && c < d, "ids grow");

        let all = b
            .store
            .list_decisions(DecisionFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.iter().map(|x| x.id).collect::<Vec<_>>(), [d, c, a]);
        let mut expected = decision(
            "SVb",
            &["prefix_conversion_collapse", "rate_limited"],
            Some("VE0123"),
            T0 + 2 * SECOND,
        );
        expected.id = d;
        assert_eq!(all[0], expected, "stored as given");

        let limited = b
            .store
            .list_decisions(DecisionFilter {
                reason: Some("rate_limited".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(limited.iter().map(|x| x.id).collect::<Vec<_>>(), [d, a]);
        // A reason is matched whole, never as a part of another.
        let part = b
            .store
            .list_decisions(DecisionFilter {
                reason: Some("rate".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(part.is_empty());
        let of_a = b
            .store
            .list_decisions(DecisionFilter {
                service_id: Some("SVa".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(of_a.len(), 2);
        let page = b
            .store
            .list_decisions(DecisionFilter {
                before_id: Some(c),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.iter().map(|x| x.id).collect::<Vec<_>>(), [a]);
    })
    .await;
}

fn entry(
    list: &str,
    kind: &str,
    value: &str,
    expires_at: Option<i64>,
) -> ringfence::store::ListEntry {
    ringfence::store::ListEntry {
        id: 0,
        list: list.to_owned(),
        kind: kind.to_owned(),
        value: value.to_owned(),
        reason: "test".to_owned(),
        created_at: T0,
        expires_at,
    }
}

#[tokio::test]
async fn list_entries_apply_until_they_expire_or_are_removed() {
    each_backend(|b| async move {
        let s = &b.store;
        let ban = s
            .put_list_entry(entry("ban", "prefix", "4470", None))
            .await
            .unwrap();
        let brief = s
            .put_list_entry(entry("ban", "ip", "192.0.2.0/24", Some(T0 + 60 * SECOND)))
            .await
            .unwrap();
        let safe = s
            .put_list_entry(entry("safe", "prefix", "4470", None))
            .await
            .unwrap();
        assert!(ban != safe, "the same value on two lists is two entries");
        // The same entry again replaces its reason and expiry, keeping its id.
        let mut again = entry("ban", "prefix", "4470", Some(T0 + 120 * SECOND));
        again.reason = "changed".into();
        assert_eq!(s.put_list_entry(again).await.unwrap(), ban);

        let now: Vec<_> = s
            .list_entries(T0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.id, e.reason))
            .collect();
        assert_eq!(
            now,
            [
                (ban, "changed".into()),
                (brief, "test".into()),
                (safe, "test".into())
            ]
        );
        let later: Vec<_> = s
            .list_entries(T0 + 60 * SECOND)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(later, [ban, safe], "expired at its time");
        assert!(s.remove_list_entry(safe).await.unwrap());
        assert!(!s.remove_list_entry(safe).await.unwrap());
        let left: Vec<_> = s
            .list_entries(T0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, [ban, brief]);
    })
    .await;
}

#[tokio::test]
async fn country_statistics_count_sends_approvals_and_refusals_in_the_window() {
    each_backend(|b| async move {
        let svc = b.service("signup", |_| {}).await;
        b.approved(&svc, crate::fixtures::PHONE, None, T0).await;
        b.start(&svc, crate::fixtures::PHONE_2)
            .at(T0 + SECOND)
            .started()
            .await;
        b.store
            .record_decision(decision("SVa", &["rate_limited"], None, T0 + 2 * SECOND))
            .await
            .unwrap();
        let stats = b.store.country_stats(T0).await.unwrap();
        assert_eq!(stats.len(), 1, "{stats:?}");
        let s = &stats[0];
        assert_eq!(
            (
                s.country_code,
                s.verifications,
                s.sends,
                s.approvals,
                s.blocked,
                s.shadow_blocked
            ),
            (44, 2, 2, 1, 1, 0)
        );
        assert!(b
            .store
            .country_stats(T0 + 3 * SECOND)
            .await
            .unwrap()
            .is_empty());
    })
    .await;
}
