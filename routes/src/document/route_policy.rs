//! The per-route traffic policy fields as written, with locations for validation.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetriesDoc {
    pub attempts: Spanned<u64>,
    pub per_try_timeout: Option<Spanned<String>>,
    pub on: Option<Spanned<Vec<Spanned<String>>>>,
    pub backoff: Option<Spanned<BackoffDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackoffDoc {
    pub base: Spanned<String>,
    pub max: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorsDoc {
    /// `false` on a route turns the top-level policy off there; on the top level, off
    /// everywhere. Required `origins` only when enabled, so a policy can be switched off
    /// without deleting it.
    #[serde(default = "super::enabled")]
    pub enabled: bool,
    pub origins: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub expose_headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub credentials: bool,
    pub max_age: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderEditsDoc {
    #[serde(default)]
    pub add: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegexRewriteDoc {
    pub pattern: Spanned<String>,
    pub substitution: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheDoc {
    pub ttl: Spanned<String>,
}
