//! JSON bodies and log lines in Envoy's substitution format: a `Struct` whose string values
//! may hold `%COMMAND%`s. Envoy escapes each value, so a hostile path cannot break the JSON.

use tollgate_proto::envoy::config::core::v3::{
    substitution_format_string, SubstitutionFormatString,
};
use tollgate_proto::google::protobuf::{value::Kind, Struct, Value};

use super::proto_map;

/// A JSON object of `fields`, each value a format string.
pub(super) fn json_format(fields: &[(&str, &str)]) -> SubstitutionFormatString {
    SubstitutionFormatString {
        format: Some(substitution_format_string::Format::JsonFormat(json_struct(
            fields,
        ))),
        ..Default::default()
    }
}

pub(super) fn json_struct(fields: &[(&str, &str)]) -> Struct {
    Struct {
        fields: proto_map(fields.iter().map(|(key, value)| {
            (
                key.to_string(),
                Value {
                    kind: Some(Kind::StringValue(value.to_string())),
                },
            )
        })),
    }
}
