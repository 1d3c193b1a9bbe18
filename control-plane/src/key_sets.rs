//! Key sets fetched for the providers Envoy enforces with keys from a `jwks_uri`.
//!
//! Envoy's jwt_authn could fetch a remote key set itself, but it never refetches early for a
//! token naming an unknown `kid`, and each Envoy would fetch on its own. Instead the control
//! plane fetches each URL once for every Envoy it serves, and hands Envoy the set inline, as
//! it does a `jwks_file`: a rotation reaches Envoy as a push. It fetches before serving
//! anything, then every `interval` (30 s by default, ext-authz's cooldown between refetches
//! for unknown keys, so a new key is trusted in about the same time in both modes), and
//! keeps the last good set when a fetch fails (stale rather than refusing every token).
//! Until a URL has answered once, its provider has no usable key ([`NO_KEYS`]) and every
//! token is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tollgate_routes::policy::KeySource;
use tollgate_routes::{Certificates, RoutesConfig};
use tollgate_runtime::fetch::{self, HttpClient, JWKS_FETCH};
use tracing::{info, warn};

/// How often each URL is fetched again.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// What a provider without a fetched set is given. Envoy refuses a configuration whose key
/// set is empty (NACKing the whole listener), so this is one public key whose private key
/// was discarded when it was made: every token is refused, as with no key at all, and the
/// listener's other routes keep being served.
const NO_KEYS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"tollgate-no-key-fetched-yet","use":"sig","alg":"ES256","x":"DPpENBcdxYvsRGEsn3W1p3h_qetXLNWLxarNFB8_IEk","y":"b78W4M4iWWAa_2RoezCfYmtYSD7FekM8FfSyNUH0X-o"}]}"#;

/// The URLs the served configuration names and the last good set fetched from each.
#[derive(Debug)]
pub struct FetchedKeySets {
    sets: Mutex<BTreeMap<String, String>>,
    /// The URLs of the providers Envoy enforces in the configuration last read.
    wanted: watch::Sender<BTreeSet<String>>,
}

impl Default for FetchedKeySets {
    fn default() -> Self {
        FetchedKeySets {
            sets: Mutex::default(),
            wanted: watch::channel(BTreeSet::new()).0,
        }
    }
}

impl FetchedKeySets {
    /// Gives each provider of `config` that Envoy enforces with a `jwks_uri` the set last
    /// fetched from it (none yet: no key), and notes the URLs to fetch.
    pub fn fill(&self, config: &RoutesConfig, certificates: &mut Certificates) {
        let sets = self.lock();
        let mut wanted = BTreeSet::new();
        for (name, provider) in &config.auth_providers {
            let Some(KeySource::JwksUri(uri)) = provider
                .jwt()
                .filter(|_| provider.enforced_by_envoy())
                .map(|jwt| &jwt.keys)
            else {
                continue;
            };
            let jwks = sets.get(uri).map_or(NO_KEYS, String::as_str);
            certificates.insert_provider_jwks(name.clone(), jwks.to_string());
            wanted.insert(uri.clone());
        }
        drop(sets);
        self.wanted.send_if_modified(|current| {
            let changed = *current != wanted;
            *current = wanted;
            changed
        });
    }

    /// Fetches every wanted URL once; returns whether a set changed.
    pub async fn fetch_all(&self, client: &HttpClient) -> bool {
        let wanted: Vec<String> = self.wanted.borrow().iter().cloned().collect();
        let fetched = futures::future::join_all(wanted.iter().map(|uri| fetch_one(client, uri)));
        let mut changed = false;
        for (uri, fetched) in wanted.iter().zip(fetched.await) {
            let Some(text) = fetched else {
                continue;
            };
            let mut sets = self.lock();
            if sets.get(uri) != Some(&text) {
                info!(%uri, "a jwks_uri has a new key set");
                sets.insert(uri.clone(), text);
                changed = true;
            }
        }
        changed
    }

    /// Fetches every wanted URL every `interval`, and at once when the wanted URLs change,
    /// calling `changed` (a reload) when a set did, until `stop`.
    pub async fn keep_fetching<F: Future<Output = ()>>(
        &self,
        client: &HttpClient,
        interval: Duration,
        changed: impl Fn() -> F,
        stop: impl Future<Output = ()>,
    ) {
        let mut wanted = self.wanted.subscribe();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tokio::time::sleep(interval) => {}
                result = wanted.changed() => {
                    if result.is_err() {
                        return;
                    }
                }
            }
            wanted.borrow_and_update();
            if self.fetch_all(client).await {
                changed().await;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, String>> {
        self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The key set at `uri`, or `None` (logged) when it cannot be fetched or is not one.
async fn fetch_one(client: &HttpClient, uri: &str) -> Option<String> {
    let fetched = match fetch::parse_url(uri) {
        Ok(url) => fetch::get(client, &url, JWKS_FETCH).await,
        Err(error) => Err(error),
    };
    match fetched.map_err(|e| e.to_string()).and_then(|bytes| {
        tollgate_routes::certificates::key_set_text(&bytes)
            .map_err(|why| format!("{uri} is not a JSON Web Key Set: {why}"))
    }) {
        Ok(text) => Some(text),
        Err(error) => {
            warn!(%uri, %error, "fetching a key set failed; Envoy keeps the last one fetched");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "version: 1
auth_providers:
  native: {issuer: https://id.example.com, audiences: [api], jwks_uri: http://127.0.0.1:9/jwks, enforce: envoy}
  sidecar: {issuer: https://id.example.com, audiences: [api], jwks_uri: http://127.0.0.1:9/other}
services: {app: {endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - {name: n, match: {prefix: /n/}, service: app, auth: {provider: native}}
  - {name: s, match: {prefix: /s/}, service: app, auth: {provider: sidecar}}
sidecars: {ext_authz: {address: 127.0.0.1:9191}}
";

    #[test]
    fn only_providers_envoy_enforces_are_fetched_and_have_no_key_until_then() {
        let config = tollgate_routes::parse("routes.yaml", ROUTES).expect("valid");
        let fetched = FetchedKeySets::default();
        let mut certificates = Certificates::default();
        fetched.fill(&config, &mut certificates);
        assert_eq!(
            *fetched.wanted.borrow(),
            BTreeSet::from(["http://127.0.0.1:9/jwks".to_string()]),
            "ext-authz fetches its own"
        );
        assert_eq!(certificates.provider_jwks("native"), Some(NO_KEYS));
        assert_eq!(certificates.provider_jwks("sidecar"), None);

        let set = r#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#;
        fetched
            .lock()
            .insert("http://127.0.0.1:9/jwks".to_string(), set.to_string());
        let mut certificates = Certificates::default();
        fetched.fill(&config, &mut certificates);
        assert_eq!(certificates.provider_jwks("native"), Some(set));
    }
}
