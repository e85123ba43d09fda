//! Services: unique names, look-up by id or name, creation order, updates and renames.

use std::sync::Arc;

use ringfence::clock::Millis;
use ringfence::store::{ServiceRecord, StoreError};
use ringfence::verify::ServiceConfig;

use crate::backend::each_backend;
use crate::fixtures::{SECOND, T0};

fn record(id: &str, name: &str, at: Millis) -> ServiceRecord {
    let mut config = ServiceConfig::default_named(name);
    config.friendly_name = format!("The {name} service");
    ServiceRecord {
        id: id.to_owned(),
        config: Arc::new(config),
        created_at: at,
        updated_at: at,
    }
}

#[track_caller]
fn assert_same_service(actual: &ServiceRecord, expected: &ServiceRecord) {
    assert_eq!(actual.id, expected.id);
    assert_eq!(*actual.config, *expected.config);
    assert_eq!(actual.created_at, expected.created_at);
    assert_eq!(actual.updated_at, expected.updated_at);
}

#[tokio::test]
async fn services_are_found_by_id_and_by_name() {
    each_backend(|b| async move {
        let beta = record("SV-2", "beta", T0);
        b.store.create_service(beta.clone()).await.unwrap();

        let by_id = b.store.get_service("SV-2").await.unwrap().expect("by id");
        assert_same_service(&by_id, &beta);
        let by_name = b.store.get_service("beta").await.unwrap().expect("by name");
        assert_same_service(&by_name, &beta);
        assert!(b.store.get_service("gamma").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn service_names_are_unique() {
    each_backend(|b| async move {
        b.store
            .create_service(record("SV-1", "alpha", T0))
            .await
            .unwrap();
        let err = b
            .store
            .create_service(record("SV-2", "alpha", T0 + SECOND))
            .await
            .expect_err("a second service named alpha");
        assert!(
            matches!(err, StoreError::Conflict("service_name")),
            "got {err:?}"
        );
        let all = b.store.list_services().await.unwrap();
        assert_eq!(all.len(), 1, "the refused service was not stored");
        assert_eq!(all[0].id, "SV-1");
    })
    .await;
}

#[tokio::test]
async fn services_are_listed_in_creation_order() {
    each_backend(|b| async move {
        // Ids and names in the opposite order of creation.
        b.store
            .create_service(record("SV-c", "zulu", T0))
            .await
            .unwrap();
        b.store
            .create_service(record("SV-b", "yankee", T0 + SECOND))
            .await
            .unwrap();
        b.store
            .create_service(record("SV-a", "xray", T0 + 2 * SECOND))
            .await
            .unwrap();
        let ids: Vec<String> = b
            .store
            .list_services()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["SV-c", "SV-b", "SV-a"]);
    })
    .await;
}

#[tokio::test]
async fn updating_a_service_replaces_its_config_and_may_rename_it() {
    each_backend(|b| async move {
        b.store
            .create_service(record("SV-1", "alpha", T0))
            .await
            .unwrap();
        let mut config = ServiceConfig::default_named("gamma");
        config.max_sends = 3;
        config.ttl_seconds = 120;

        let updated = b
            .store
            .update_service("SV-1", config.clone(), T0 + 10 * SECOND)
            .await
            .unwrap()
            .expect("SV-1 exists");
        let expected = ServiceRecord {
            id: "SV-1".into(),
            config: Arc::new(config),
            created_at: T0,
            updated_at: T0 + 10 * SECOND,
        };
        assert_same_service(&updated, &expected);
        let by_new_name = b.store.get_service("gamma").await.unwrap().expect("gamma");
        assert_same_service(&by_new_name, &expected);
        assert!(
            b.store.get_service("alpha").await.unwrap().is_none(),
            "the old name is free"
        );

        // Keeping its own name is no conflict.
        let mut same_name = (*expected.config).clone();
        same_name.max_sends = 4;
        let kept = b
            .store
            .update_service("SV-1", same_name, T0 + 11 * SECOND)
            .await
            .unwrap()
            .expect("SV-1 exists");
        assert_eq!(kept.config.max_sends, 4);
        assert_eq!(kept.config.name, "gamma");
    })
    .await;
}

#[tokio::test]
async fn renaming_to_a_taken_name_conflicts_and_changes_nothing() {
    each_backend(|b| async move {
        let alpha = record("SV-1", "alpha", T0);
        b.store.create_service(alpha.clone()).await.unwrap();
        b.store
            .create_service(record("SV-2", "beta", T0 + SECOND))
            .await
            .unwrap();

        let err = b
            .store
            .update_service(
                "SV-1",
                ServiceConfig::default_named("beta"),
                T0 + 5 * SECOND,
            )
            .await
            .expect_err("beta is taken");
        assert!(
            matches!(err, StoreError::Conflict("service_name")),
            "got {err:?}"
        );
        let unchanged = b.store.get_service("SV-1").await.unwrap().expect("SV-1");
        assert_same_service(&unchanged, &alpha);
    })
    .await;
}

#[tokio::test]
async fn updating_an_unknown_service_finds_nothing() {
    each_backend(|b| async move {
        let got = b
            .store
            .update_service("SV-none", ServiceConfig::default_named("ghost"), T0)
            .await
            .unwrap();
        assert!(got.is_none());
        assert!(b.store.list_services().await.unwrap().is_empty());
    })
    .await;
}
