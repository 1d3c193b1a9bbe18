use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::metrics::Metrics;
use tollgate_testkit::jwt::{b64, jwks, JwksServer, TestKey};

/// Generous: the test machine is small and busy.
const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn a_jwks_with_every_supported_key_type_parses() {
    let keys = [
        TestKey::rsa("r", 0),
        TestKey::p256("e256"),
        TestKey::p384("e384"),
        TestKey::ed25519("d"),
    ];
    let set = KeySet::parse_jwks(jwks(&keys.iter().collect::<Vec<_>>()).as_bytes()).expect("jwks");
    let kinds: Vec<KeyKind> = set.keys().iter().map(|k| k.kind).collect();
    assert_eq!(
        kinds,
        vec![
            KeyKind::Rsa,
            KeyKind::EcP256,
            KeyKind::EcP384,
            KeyKind::Ed25519
        ]
    );
}

#[test]
fn unusable_keys_are_skipped_and_usable_ones_kept() {
    let good = TestKey::p256("good");
    let doc = json!({"keys": [
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "short", "n": b64(&[0xff; 128]), "e": "AQAB"},
        {"kty": "EC", "kid": "bad-alg", "crv": "P-256", "alg": "RS256", "x": good.jwk["x"], "y": good.jwk["y"]},
        good.jwk,
    ]});
    let set = KeySet::parse_jwks(doc.to_string().as_bytes()).expect("jwks");
    assert_eq!(set.len(), 1);
    assert_eq!(set.keys()[0].kid.as_deref(), Some("good"));
}

#[test]
fn a_jwks_without_usable_keys_is_an_error() {
    let doc = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
    assert!(matches!(
        KeySet::parse_jwks(doc.to_string().as_bytes()),
        Err(JwksError::NoUsableKey(_))
    ));
    assert!(matches!(
        KeySet::parse_jwks(b"not json"),
        Err(JwksError::Syntax(_))
    ));
}

#[test]
fn a_short_shared_secret_is_refused() {
    assert_eq!(
        KeySet::from_secret(b"too short").err(),
        Some(JwksError::ShortSecret)
    );
}

fn store(origin: KeyOrigin, cooldown: Duration) -> (Arc<KeyStore>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let store = KeyStore::new(
        "remote",
        origin,
        KeySet::default(),
        cooldown,
        Arc::clone(&metrics),
    );
    (Arc::new(store), metrics)
}

fn remote(server: &JwksServer) -> KeyOrigin {
    let client = HttpClient::new().expect("client");
    KeyOrigin::Remote(Box::new(
        RemoteJwks::new(&server.uri(), client).expect("uri"),
    ))
}

#[tokio::test]
async fn remote_jwks_is_fetched_and_a_rotation_is_found_on_an_unknown_kid() {
    let old = TestKey::p256("old");
    let server = JwksServer::start(jwks(&[&old])).await;
    let (store, _) = store(remote(&server), Duration::ZERO);
    assert!(store.refresh().await.expect("fetch"));
    assert!(store
        .current()
        .keys()
        .iter()
        .any(|k| k.kid.as_deref() == Some("old")));

    let new = TestKey::p256("new");
    server.set(200, jwks(&[&old, &new]));
    assert!(store.refresh_for_unknown_kid().await, "a new key set");
    assert!(store
        .current()
        .keys()
        .iter()
        .any(|k| k.kid.as_deref() == Some("new")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown() {
    let key = TestKey::p256("k");
    let server = JwksServer::start(jwks(&[&key])).await;
    let (store, metrics) = store(remote(&server), Duration::from_secs(3600));
    store.refresh().await.expect("initial fetch");
    assert_eq!(server.hits(), 1);

    let flood: Vec<_> = (0..200)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.refresh_for_unknown_kid().await })
        })
        .collect();
    for task in flood {
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("flood answered")
            .expect("task");
    }
    assert_eq!(
        server.hits(),
        1,
        "the initial fetch was within the cooldown"
    );
    assert_eq!(metrics.jwks_fetch_count("remote", "cooldown"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_after_the_cooldown_share_one_fetch() {
    let key = TestKey::p256("k");
    let server = JwksServer::start(jwks(&[&key])).await;
    let (store, _) = store(remote(&server), Duration::from_secs(3600));
    // No fetch yet, so the cooldown is not running: the first unknown kid fetches, and the
    // others either wait for that fetch or find the cooldown running.
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.refresh_for_unknown_kid().await })
        })
        .collect();
    for task in flood {
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("flood answered")
            .expect("task");
    }
    assert_eq!(server.hits(), 1);
    assert_eq!(store.current().len(), 1);
}

#[tokio::test]
async fn the_stale_key_set_is_kept_when_the_issuer_fails() {
    let key = TestKey::p256("k");
    let server = JwksServer::start(jwks(&[&key])).await;
    let (store, metrics) = store(remote(&server), Duration::ZERO);
    store.refresh().await.expect("initial fetch");
    let epoch = store.epoch();

    server.set(500, "oops".into());
    assert!(store.refresh().await.is_err());
    server.set(200, "{\"keys\": []}".into());
    assert!(store.refresh().await.is_err());
    server.set(200, "<html>".into());
    assert!(!store.refresh_for_unknown_kid().await);

    assert_eq!(store.epoch(), epoch, "cached tokens stay valid");
    assert_eq!(store.current().len(), 1);
    assert_eq!(metrics.jwks_fetch_count("remote", "error"), 3);
}

#[tokio::test]
async fn an_unchanged_refetch_keeps_the_epoch() {
    let key = TestKey::p256("k");
    let server = JwksServer::start(jwks(&[&key])).await;
    let (store, _) = store(remote(&server), Duration::ZERO);
    store.refresh().await.expect("fetch");
    let epoch = store.epoch();
    assert!(!store.refresh().await.expect("refetch"));
    assert_eq!(store.epoch(), epoch);
}

#[tokio::test]
async fn an_unreachable_issuer_is_an_error_not_a_hang() {
    // Bind and drop, so the port is (almost certainly) closed.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let client = HttpClient::new().expect("client");
    let origin = KeyOrigin::Remote(Box::new(
        RemoteJwks::new(&format!("http://{addr}/jwks"), client).expect("uri"),
    ));
    let (store, _) = store(origin, Duration::ZERO);
    let result = tokio::time::timeout(PATIENCE, store.refresh())
        .await
        .expect("bounded");
    assert!(result.is_err());
}

#[tokio::test]
async fn a_rotated_jwks_file_is_picked_up_without_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = TestKey::p256("old");
    let new = TestKey::p256("new");
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&old])).expect("write");
    let routes = dir.path().join("routes.yaml");
    let yaml = "version: 1\nauth_providers:\n  main:\n    issuer: https://id.example.com\n    audiences: [tollgate]\n    jwks_file: jwks.json\n";
    std::fs::write(&routes, yaml).expect("write");
    let config = tollgate_routes::parse("routes.yaml", yaml).expect("valid routes");
    let settings = crate::providers::ProviderSettings {
        base_dir: dir.path().to_path_buf(),
        client: HttpClient::new().expect("client"),
        refresh_interval: Duration::from_secs(300),
        cooldown: Duration::from_secs(30),
        metrics: Arc::new(Metrics::default()),
    };
    let table = crate::providers::ProviderTable::build(&config, None, &settings)
        .await
        .expect("providers");
    let provider = table.get("main").expect("provider");
    let crate::providers::Verifier::Jwt { keys, .. } = &provider.verifier else {
        panic!("a JWT provider");
    };
    let epoch = keys.epoch();

    // Replace by rename, as editors and deployers do.
    let temp = dir.path().join(".jwks.json.tmp");
    std::fs::write(&temp, jwks(&[&new])).expect("write");
    std::fs::rename(&temp, dir.path().join("jwks.json")).expect("rename");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut changed = keys.epoch() != epoch;
    while !changed && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        changed = keys.epoch() != epoch;
    }
    assert!(changed, "the new file was not loaded within {PATIENCE:?}");
    let kids: Vec<_> = keys
        .current()
        .keys()
        .iter()
        .map(|k| k.kid.clone())
        .collect();
    assert_eq!(kids, vec![Some("new".to_string())]);

    // A broken file keeps the last good keys.
    std::fs::write(dir.path().join("jwks.json"), "{broken").expect("write");
    assert!(keys.reload_file().await.is_err());
    assert_eq!(keys.current().len(), 1);
}
