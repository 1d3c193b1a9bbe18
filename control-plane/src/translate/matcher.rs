//! Envoy's request matchers as the translation builds them, for routes and for the
//! rate-limit actions that match headers alike.

use tollgate_proto::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use tollgate_proto::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};

pub(super) fn header(name: &str, pattern: MatchPattern) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        })),
        ..Default::default()
    }
}

/// Envoy's safe_regex is RE2 and must match the whole value, as validation assumed.
pub(super) fn regex_matcher(regex: String) -> RegexMatcher {
    RegexMatcher {
        regex,
        engine_type: None,
    }
}
