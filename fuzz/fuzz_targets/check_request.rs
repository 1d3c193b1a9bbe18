//! Differential: ext-authz's lean `CheckCall` (tollgate-proto's `check_request`) against
//! envoy-types' full `CheckRequest`, decoded by prost from the same bytes.
//!
//! - Where prost decodes the full message, the lean view decodes too and reads the same
//!   context extensions, request headers, path, raw header map and peer certificate.
//! - Where prost refuses the bytes and the lean view does not, the difference is one of
//!   the two documented in fuzz/README.md: the lean view does not look inside the fields it
//!   does not declare, and it reads a map entry or certificate that is not UTF-8 as absent
//!   where prost fails the whole message. Then the lean view, with those entries dropped,
//!   encoded and decoded by prost, reads the same as before.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate_proto::check_request::{lookup, CheckCall, Entry};
use tollgate_proto::envoy::service::auth::v3::CheckRequest;

/// Every key of `entries` with the value a decoded map would hold for it.
fn as_map(entries: &[Entry]) -> HashMap<String, Option<String>> {
    entries
        .iter()
        .filter_map(|e| std::str::from_utf8(&e.key).ok())
        .map(|key| (key.to_string(), lookup(entries, key).map(str::to_string)))
        .collect()
}

/// What the lean view reads equals what prost read into `full`.
fn assert_reads_the_same(lean: &CheckCall, full: &CheckRequest) {
    let attributes = full.attributes.clone().unwrap_or_default();
    let extensions = lean
        .attributes
        .as_ref()
        .map(|a| as_map(&a.context_extensions))
        .unwrap_or_default();
    let expected: HashMap<String, Option<String>> = attributes
        .context_extensions
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    assert_eq!(extensions, expected, "context extensions");
    for (key, value) in &attributes.context_extensions {
        assert_eq!(lean.context(key), Some(value.as_str()), "context {key:?}");
    }

    let full_http = attributes.request.and_then(|r| r.http);
    match (lean.http(), &full_http) {
        (Some(http), Some(full_http)) => {
            let headers = as_map(&http.headers);
            let expected: HashMap<String, Option<String>> = full_http
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            assert_eq!(headers, expected, "headers");
            assert_eq!(http.path, full_http.path, "path");
            assert_eq!(http.header_map, full_http.header_map, "header_map");
        }
        (None, None) => {}
        (lean, full) => panic!("http present in one only: {lean:?} / {full:?}"),
    }

    let certificate = attributes.source.map(|s| s.certificate).unwrap_or_default();
    let expected = (!certificate.is_empty()).then_some(certificate.as_bytes());
    assert_eq!(lean.peer_certificate(), expected, "peer certificate");
}

/// `lean` without what prost refuses in the fields it declares: entries and a certificate
/// that are not UTF-8.
fn without_non_utf8(mut lean: CheckCall) -> CheckCall {
    let utf8 =
        |e: &Entry| std::str::from_utf8(&e.key).is_ok() && std::str::from_utf8(&e.value).is_ok();
    if let Some(attributes) = lean.attributes.as_mut() {
        attributes.context_extensions.retain(utf8);
        if let Some(source) = attributes.source.as_mut() {
            if std::str::from_utf8(&source.certificate).is_err() {
                source.certificate = Default::default();
            }
        }
        if let Some(http) = attributes.request.as_mut().and_then(|r| r.http.as_mut()) {
            http.headers.retain(utf8);
        }
    }
    lean
}

fuzz_target!(|data: &[u8]| {
    let lean = CheckCall::decode(data);
    match CheckRequest::decode(data) {
        Ok(full) => {
            let lean = lean.unwrap_or_else(|error| {
                panic!("prost decodes the CheckRequest, the lean view does not: {error}")
            });
            assert_reads_the_same(&lean, &full);
        }
        Err(_) => {
            let Ok(lean) = lean else { return };
            let cleaned = without_non_utf8(lean.clone());
            let full = CheckRequest::decode(cleaned.encode_to_vec().as_slice())
                .expect("the lean view's own fields, valid UTF-8, decode as a CheckRequest");
            assert_reads_the_same(&cleaned, &full);
            // What the lean view reads of the uncleaned bytes is what it reads of the
            // cleaned ones, or absent where the last entry for a key is not UTF-8.
            for (key, _) in cleaned
                .attributes
                .as_ref()
                .map(|a| as_map(&a.context_extensions))
                .unwrap_or_default()
            {
                let read = lean.context(&key);
                assert!(
                    read.is_none() || read == cleaned.context(&key),
                    "context {key:?}"
                );
            }
            if let (Some(http), Some(clean_http)) = (lean.http(), cleaned.http()) {
                for (key, _) in as_map(&clean_http.headers) {
                    let read = lookup(&http.headers, &key);
                    assert!(read.is_none() || read == lookup(&clean_http.headers, &key));
                }
                assert_eq!(http.path, clean_http.path);
            }
        }
    }
});
