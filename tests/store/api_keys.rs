//! API keys: create, read, list in creation order, revoke exactly once.

use ringfence::clock::Millis;
use ringfence::store::{ApiKeyRecord, Scope};

use crate::backend::each_backend;
use crate::fixtures::{SECOND, T0};

fn key(id: &str, name: &str, created_at: Millis, scopes: Vec<Scope>) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.to_owned(),
        name: name.to_owned(),
        secret_hash: ringfence::crypto::sha256(id.as_bytes()).to_vec(),
        scopes,
        created_at,
        revoked_at: None,
    }
}

type KeyFields = (String, String, Vec<u8>, Vec<Scope>, Millis, Option<Millis>);

fn fields(k: &ApiKeyRecord) -> KeyFields {
    (
        k.id.clone(),
        k.name.clone(),
        k.secret_hash.clone(),
        k.scopes.clone(),
        k.created_at,
        k.revoked_at,
    )
}

#[tokio::test]
async fn api_keys_are_stored_and_read_back_whole() {
    each_backend(|b| async move {
        let admin = key("k-admin", "ops", T0, vec![Scope::Admin, Scope::Verify]);
        let verify = key("k-verify", "app", T0 + SECOND, vec![Scope::Verify]);
        b.store.create_api_key(admin.clone()).await.unwrap();
        b.store.create_api_key(verify.clone()).await.unwrap();

        let got = b
            .store
            .get_api_key("k-admin")
            .await
            .unwrap()
            .expect("k-admin");
        assert_eq!(fields(&got), fields(&admin));
        let got = b
            .store
            .get_api_key("k-verify")
            .await
            .unwrap()
            .expect("k-verify");
        assert_eq!(fields(&got), fields(&verify));
        assert!(b.store.get_api_key("k-none").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn api_keys_are_listed_in_creation_order() {
    each_backend(|b| async move {
        // Ids in the opposite order of creation, so the order shown is by time.
        for (id, at) in [("k-c", T0), ("k-b", T0 + SECOND), ("k-a", T0 + 2 * SECOND)] {
            b.store
                .create_api_key(key(id, id, at, vec![Scope::Verify]))
                .await
                .unwrap();
        }
        let ids: Vec<String> = b
            .store
            .list_api_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(ids, ["k-c", "k-b", "k-a"]);
    })
    .await;
}

#[tokio::test]
async fn revoking_a_key_works_once() {
    each_backend(|b| async move {
        b.store
            .create_api_key(key("k-1", "app", T0, vec![Scope::Verify]))
            .await
            .unwrap();
        assert!(b
            .store
            .revoke_api_key("k-1", T0 + 5 * SECOND)
            .await
            .unwrap());
        assert!(
            !b.store
                .revoke_api_key("k-1", T0 + 6 * SECOND)
                .await
                .unwrap(),
            "a second revocation reports that there was no active key"
        );
        assert!(!b.store.revoke_api_key("k-none", T0).await.unwrap());

        let got = b.store.get_api_key("k-1").await.unwrap().expect("k-1");
        assert_eq!(
            got.revoked_at,
            Some(T0 + 5 * SECOND),
            "the first revocation's time stays"
        );
        let listed = b.store.list_api_keys().await.unwrap();
        assert_eq!(listed.len(), 1, "revoked keys stay listed");
        assert_eq!(listed[0].revoked_at, Some(T0 + 5 * SECOND));
    })
    .await;
}
