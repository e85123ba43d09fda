//! Anti-abuse decisions: recorded with an id, listed newest first, by reason and
//! service, page by page.

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
