//! The routes.yaml document as written, with the source location of every value that
//! validation may need to point at.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::{Options, Spanned};

use crate::error::{ConfigError, ConfigErrors};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Document {
    pub version: Spanned<u64>,
    #[serde(default)]
    pub listeners: Vec<ListenerDoc>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceDoc>,
    #[serde(default)]
    pub routes: Vec<RouteDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerDoc {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceDoc {
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    pub connect_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteDoc {
    pub name: Spanned<String>,
    pub listener: Option<Spanned<String>>,
    #[serde(rename = "match")]
    pub matcher: Spanned<MatchDoc>,
    pub service: Spanned<String>,
    pub rewrite_prefix: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatchDoc {
    pub prefix: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
}

/// Reads the YAML into a [`Document`]; a syntax or schema error is reported at its location.
pub(crate) fn read(file: &str, text: &str) -> Result<Document, ConfigErrors> {
    let mut options = Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line,
            column,
            message: strip_location_suffix(&e.to_string()),
        }])
    })
}

/// serde-saphyr appends its own " at line L, column C"; ours leads the message instead.
fn strip_location_suffix(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message).trim();
    match first_line.rfind(" at line ") {
        Some(at) => first_line[..at].to_string(),
        None => first_line.to_string(),
    }
}
