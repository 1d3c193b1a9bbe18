//! `request_headers` and `response_headers` as Envoy's route-level header edits.

use tollgate_proto::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use tollgate_routes::route_policy::HeaderEdits;

/// Headers to add (with their append action) and names to remove. Envoy removes first,
/// then adds, the order routes.yaml documents.
pub(super) fn header_edits(edits: &HeaderEdits) -> (Vec<HeaderValueOption>, Vec<String>) {
    let set = edits
        .set
        .iter()
        .map(|(name, value)| option(name, value, HeaderAppendAction::OverwriteIfExistsOrAdd));
    let add = edits
        .add
        .iter()
        .map(|(name, value)| option(name, value, HeaderAppendAction::AppendIfExistsOrAdd));
    (set.chain(add).collect(), edits.remove.clone())
}

fn option(name: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            // Envoy reads `%…%` in header values as a substitution command; routes.yaml
            // values are literal text, so escape every `%`.
            value: value.replace('%', "%%"),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}
