//! A route's `transcode`: a compiled descriptor set and the gRPC services of it whose
//! methods the route maps from JSON.

use std::path::PathBuf;

use prost::Message as _;
use prost_types::FileDescriptorSet;
use serde_saphyr::Spanned;

use super::{read_file, Errors};
use crate::destination::Transcode;
use crate::document::TranscodeDoc;
use crate::listener_tls::FileSource;

/// With `files`, the descriptor set is read and every service named must be in it.
pub(super) fn transcode(
    node: &Spanned<TranscodeDoc>,
    files: Option<&dyn FileSource>,
    errors: &mut Errors,
) -> Option<Transcode> {
    let before = errors.found.len();
    let doc = &node.value;
    if doc.services.value.is_empty() {
        errors.at(
            &doc.services,
            "transcode needs one or more gRPC services, e.g. [shop.v1.Orders]".to_string(),
        );
    }
    let descriptor_set = match files {
        None => Vec::new(),
        Some(files) => {
            let bytes = read_file(files, &doc.descriptor_set, "descriptor_set", errors)?;
            let known = services_in(&bytes).or_else(|| {
                errors.at(
                    &doc.descriptor_set,
                    format!(
                        "descriptor_set \"{}\" is not a compiled descriptor set (protoc --include_imports --descriptor_set_out)",
                        doc.descriptor_set.value
                    ),
                );
                None
            })?;
            for service in &doc.services.value {
                if !known.contains(&service.value) {
                    errors.at(
                        service,
                        format!(
                            "service \"{}\" is not in descriptor_set \"{}\" (it has: {})",
                            service.value,
                            doc.descriptor_set.value,
                            known.join(", ")
                        ),
                    );
                }
            }
            bytes
        }
    };
    (errors.found.len() == before).then(|| Transcode {
        descriptor_file: PathBuf::from(&doc.descriptor_set.value),
        services: doc.services.value.iter().map(|s| s.value.clone()).collect(),
        descriptor_set,
    })
}

/// The full names of the services a descriptor set declares, or `None` if it is not one.
fn services_in(bytes: &[u8]) -> Option<Vec<String>> {
    let set = FileDescriptorSet::decode(bytes).ok()?;
    if set.file.is_empty() {
        return None;
    }
    Some(
        set.file
            .iter()
            .flat_map(|file| {
                let package = file.package().to_string();
                file.service.iter().map(move |service| {
                    if package.is_empty() {
                        service.name().to_string()
                    } else {
                        format!("{package}.{}", service.name())
                    }
                })
            })
            .collect(),
    )
}
