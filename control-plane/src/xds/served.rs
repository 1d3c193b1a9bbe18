//! The resource types Tollgate serves, in the order updates must reach Envoy.

use std::sync::Arc;

use crate::snapshot::{type_url, ResourceSet, Snapshot};

/// One of the served xDS types; `Ord` is make-before-break order (xDS protocol, "Eventual
/// consistency considerations": CDS, then EDS, then LDS, then RDS), then SDS (see
/// [`type_url`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ServedType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl ServedType {
    /// Every served type, in push order.
    pub const ALL: [ServedType; 5] = [
        ServedType::Cluster,
        ServedType::Endpoint,
        ServedType::Listener,
        ServedType::Route,
        ServedType::Secret,
    ];

    pub fn from_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|served| served.url() == url)
    }

    pub fn url(self) -> &'static str {
        type_url::ORDERED[self.index()]
    }

    /// `snapshot`'s resources of this type, found by position rather than by URL.
    pub fn set_in(self, snapshot: &Snapshot) -> &Arc<ResourceSet> {
        snapshot.set_at(self.index())
    }

    /// The name used in logs and node status.
    pub fn short_name(self) -> &'static str {
        match self {
            ServedType::Cluster => "cluster",
            ServedType::Endpoint => "endpoint",
            ServedType::Listener => "listener",
            ServedType::Route => "route",
            ServedType::Secret => "secret",
        }
    }

    /// Position in [`ServedType::ALL`], for per-type arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// LDS and CDS may be requested without names, meaning "everything" (xDS protocol, "How the
    /// client specifies what resources to return": wildcard mode exists only for these two).
    pub fn allows_wildcard(self) -> bool {
        matches!(self, ServedType::Cluster | ServedType::Listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_types_follow_the_snapshot_order() {
        for served in ServedType::ALL {
            assert_eq!(ServedType::from_url(served.url()), Some(served));
        }
        assert_eq!(ServedType::from_url("type.googleapis.com/unknown"), None);
    }
}
