//! Tollgate's ext-authz service: it answers Envoy's `envoy.service.auth.v3.Authorization`
//! checks by validating the credentials routes.yaml's auth providers accept: JWTs, API keys
//! and client certificates.
//!
//! The pieces: [`jwks`] keeps each JWT provider's keys (local file or remote JWKS, with
//! rotation and a refetch cooldown), [`verify`] checks a token purely (token, keys, policy,
//! time in; claims or a typed rejection out), [`cache`] remembers verified tokens,
//! [`api_keys`] hashes and looks up API keys in their live keys file, [`certificate`] reads
//! the consumer from a verified client certificate, [`identity`] is what the upstream is told
//! whichever way the caller proved itself, [`providers`] holds the live table built from
//! routes.yaml, [`extract`] finds the credential in a request ([`tollgate_proto::check_request`]: the parts of Envoy's request it reads),
//! [`service`] decides a `CheckRequest` and [`response`] renders the `CheckResponse`,
//! [`server`] runs it all with health and metrics.
#![forbid(unsafe_code)]

pub mod api_keys;
pub mod cache;
pub mod certificate;
pub mod cli;
pub mod extract;
pub mod identity;
pub mod jwks;
pub mod metrics;
pub mod providers;
pub mod reload;
pub mod response;
pub mod server;
pub mod service;
pub mod verify;

/// Selects aws-lc-rs as jsonwebtoken's crypto backend. jsonwebtoken 11 picks a backend from
/// cargo features and panics at the first verification if feature unification ever turns
/// on a second one, so the choice is made explicitly once at start-up. Calling it again is
/// harmless.
pub fn install_crypto() {
    // Err means a provider is already installed, which is the goal.
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
}
