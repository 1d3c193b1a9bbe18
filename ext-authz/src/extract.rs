//! Finding the credential in the request Envoy describes: a token in a `Bearer` header
//! (RFC 6750 §2.1), a query parameter (§2.3) or a cookie, as the provider's `token` setting
//! says; an API key in its header or query parameter. Pure.

use std::borrow::Cow;

use tollgate_proto::envoy::config::core::v3::HeaderMap;
use tollgate_routes::policy::{KeyLocation, TokenSource};

use tollgate_proto::check_request::{lookup, Entry};

/// The request as Envoy sent it: header names are lower-case.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub headers: &'a [Entry],
    /// Used instead of `headers` when Envoy's `encode_raw_headers` is on.
    pub header_map: Option<&'a HeaderMap>,
    /// The request target: path and query string, undecoded.
    pub path: &'a str,
}

/// The outcome of looking for the token.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    Token(Cow<'a, str>),
    /// No credentials of the provider's kind (RFC 6750 §3.1: answer without an error code).
    Missing,
    /// More than one token (RFC 6750 §2: a client MUST NOT use more than one method or
    /// repeat one); refusing is safer than guessing which one the upstream will read.
    Ambiguous,
}

impl<'a> RequestView<'a> {
    /// A header's value; repeated raw headers are joined with "," as Envoy joins them in
    /// `headers`.
    pub fn header(&self, name: &str) -> Option<Cow<'a, str>> {
        if let Some(value) = lookup(self.headers, name) {
            return Some(Cow::Borrowed(value));
        }
        let map = self.header_map?;
        let mut values = map
            .headers
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| {
                if h.raw_value.is_empty() {
                    Cow::Borrowed(h.value.as_str())
                } else {
                    String::from_utf8_lossy(&h.raw_value)
                }
            });
        let first = values.next()?;
        match values.next() {
            None => Some(first),
            Some(second) => {
                let mut joined = format!("{first},{second}");
                for more in values {
                    joined.push(',');
                    joined.push_str(&more);
                }
                Some(Cow::Owned(joined))
            }
        }
    }
}

/// Finds the token where `source` says it is.
pub fn find_token<'a>(source: &TokenSource, request: &RequestView<'a>) -> Found<'a> {
    match source {
        TokenSource::BearerHeader(name) => match request.header(name) {
            None => Found::Missing,
            Some(Cow::Borrowed(value)) => bearer(value)
                .map(|t| Found::Token(Cow::Borrowed(t)))
                .unwrap_or(Found::Missing),
            Some(Cow::Owned(value)) => bearer(&value)
                .map(|t| Found::Token(Cow::Owned(t.to_string())))
                .unwrap_or(Found::Missing),
        },
        TokenSource::Query(name) => query_parameter(request.path, name),
        TokenSource::Cookie(name) => {
            let Some(cookies) = request.header("cookie") else {
                return Found::Missing;
            };
            single(
                cookies
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .filter(|(key, _)| key.trim() == name)
                    .map(|(_, value)| {
                        // RFC 6265 §4.1.1: a cookie value may be wrapped in double quotes.
                        let value = value.trim();
                        let value = value
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or(value);
                        Cow::Owned(value.to_string())
                    }),
            )
        }
    }
}

/// Finds an API key where `location` says it is: the whole value of a header, or a query
/// parameter. A header repeated (Envoy joins repeats with ",") holds more than one key.
pub fn find_key<'a>(location: &KeyLocation, request: &RequestView<'a>) -> Found<'a> {
    match location {
        KeyLocation::Header(name) => match request.header(name) {
            None => Found::Missing,
            Some(value) if value.contains(',') => Found::Ambiguous,
            Some(Cow::Borrowed(value)) => single(std::iter::once(Cow::Borrowed(value.trim()))),
            Some(Cow::Owned(value)) => {
                single(std::iter::once(Cow::Owned(value.trim().to_string())))
            }
        },
        KeyLocation::Query(name) => query_parameter(request.path, name),
    }
}

/// The one value of the query parameter `name` in `path`.
fn query_parameter<'a>(path: &'a str, name: &str) -> Found<'a> {
    let query = path
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(q))
        .unwrap_or("");
    single(
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(key, _)| percent_decode(key) == name)
            .map(|(_, value)| percent_decode(value)),
    )
}

/// `Bearer <token>`: the scheme is case-insensitive (RFC 9110 §11.1); other schemes are
/// not this provider's credentials.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

fn single<'a>(mut values: impl Iterator<Item = Cow<'a, str>>) -> Found<'a> {
    match (values.next(), values.next()) {
        (None, _) => Found::Missing,
        (Some(value), None) if value.is_empty() => Found::Missing,
        (Some(value), None) => Found::Token(value),
        (Some(_), Some(_)) => Found::Ambiguous,
    }
}

/// RFC 3986 §2.1 percent-decoding of text; invalid escapes are kept as they are, and decoded
/// bytes that are not UTF-8 are replaced.
fn percent_decode(text: &str) -> Cow<'_, str> {
    match percent_decode_bytes(text.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

/// RFC 3986 §2.1 percent-decoding: `%XX` escapes only (`+` stays `+`: in a PEM certificate
/// it is a base64 character, not a space); invalid escapes are kept as they are.
pub(crate) fn percent_decode_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    if !bytes.contains(&b'%') {
        return Cow::Borrowed(bytes);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match escaped {
            Some((high, low)) => {
                out.push(high << 4 | low);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tollgate_proto::envoy::config::core::v3::HeaderValue;

    use super::*;

    fn view<'a>(headers: &'a [Entry], path: &'a str) -> RequestView<'a> {
        RequestView {
            headers,
            header_map: None,
            path,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<Entry> {
        pairs
            .iter()
            .map(|(k, v)| Entry {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect()
    }

    fn bearer_source() -> TokenSource {
        TokenSource::BearerHeader("authorization".into())
    }

    #[test]
    fn an_api_key_is_a_whole_header_value_or_one_query_parameter() {
        let header = KeyLocation::Header("x-api-key".into());
        let h = headers(&[("x-api-key", " k-123 ")]);
        assert_eq!(
            find_key(&header, &view(&h, "/")),
            Found::Token("k-123".into())
        );
        let h = headers(&[("x-api-key", "k-1,k-2")]);
        assert_eq!(find_key(&header, &view(&h, "/")), Found::Ambiguous);
        assert_eq!(find_key(&header, &view(&[], "/")), Found::Missing);
        let query = KeyLocation::Query("api_key".into());
        assert_eq!(
            find_key(&query, &view(&[], "/v1?x=1&api_key=k%2D9")),
            Found::Token("k-9".into())
        );
        assert_eq!(
            find_key(&query, &view(&[], "/v1?api_key=a&api_key=b")),
            Found::Ambiguous
        );
        assert_eq!(
            find_key(&query, &view(&[], "/v1?api_keyx=a")),
            Found::Missing
        );
    }

    #[test]
    fn bearer_token_is_taken_from_authorization() {
        let h = headers(&[("authorization", "Bearer abc.def.ghi")]);
        assert_eq!(
            find_token(&bearer_source(), &view(&h, "/")),
            Found::Token("abc.def.ghi".into())
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let h = headers(&[("authorization", "bEaReR   abc")]);
        assert_eq!(
            find_token(&bearer_source(), &view(&h, "/")),
            Found::Token("abc".into())
        );
    }

    #[test]
    fn another_scheme_counts_as_no_token() {
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(find_token(&bearer_source(), &view(&h, "/")), Found::Missing);
        let h = headers(&[("authorization", "Bearer")]);
        assert_eq!(find_token(&bearer_source(), &view(&h, "/")), Found::Missing);
    }

    #[test]
    fn a_custom_header_still_needs_bearer() {
        let source = TokenSource::BearerHeader("x-token".into());
        let h = headers(&[("x-token", "Bearer t1"), ("authorization", "Bearer t2")]);
        assert_eq!(
            find_token(&source, &view(&h, "/")),
            Found::Token("t1".into())
        );
    }

    #[test]
    fn raw_header_map_is_used_when_headers_is_empty() {
        let h = Vec::new();
        let map = HeaderMap {
            headers: vec![HeaderValue {
                key: "authorization".into(),
                value: String::new(),
                raw_value: b"Bearer raw".to_vec(),
            }],
        };
        let request = RequestView {
            headers: &h,
            header_map: Some(&map),
            path: "/",
        };
        assert_eq!(
            find_token(&bearer_source(), &request),
            Found::Token("raw".into())
        );
    }

    #[test]
    fn query_parameter_token_is_decoded() {
        let source = TokenSource::Query("access_token".into());
        let h = Vec::new();
        assert_eq!(
            find_token(&source, &view(&h, "/x?a=1&access_token=ab%2Ecd.ef#frag")),
            Found::Token("ab.cd.ef".into())
        );
        assert_eq!(find_token(&source, &view(&h, "/x?a=1")), Found::Missing);
        assert_eq!(find_token(&source, &view(&h, "/x")), Found::Missing);
    }

    #[test]
    fn a_repeated_query_token_is_ambiguous() {
        let source = TokenSource::Query("access_token".into());
        let h = Vec::new();
        assert_eq!(
            find_token(&source, &view(&h, "/?access_token=a&access_token=b")),
            Found::Ambiguous
        );
    }

    #[test]
    fn cookie_token_is_found_among_others() {
        let source = TokenSource::Cookie("session".into());
        let h = headers(&[("cookie", "theme=dark; session=\"t.o.k\"; lang=en")]);
        assert_eq!(
            find_token(&source, &view(&h, "/")),
            Found::Token("t.o.k".into())
        );
        let h = headers(&[("cookie", "theme=dark")]);
        assert_eq!(find_token(&source, &view(&h, "/")), Found::Missing);
    }

    #[test]
    fn truncated_percent_escapes_do_not_panic() {
        for text in ["%", "%4", "a%", "%zz", "%e2%82"] {
            let _ = percent_decode(text);
        }
        assert_eq!(percent_decode("%41%"), "A%");
    }
}
