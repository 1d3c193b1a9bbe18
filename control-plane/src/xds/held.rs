//! What a client holds of one resource type, by a stream's account: resource name → version.
//!
//! A wildcard client (every Envoy, for clusters and listeners) holds a whole set of the
//! snapshot. Copying that set's names and versions into every stream is what made a fleet's
//! memory and CPU grow by a set per node (about 0.4 MB and a millisecond per node per edit
//! with 1,000 clusters); instead a stream keeps a reference to the snapshot's shared set plus
//! the few names where its client differs from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::snapshot::{Resource, ResourceSet};

/// One name held: at the version of the base's resource, or as an exception.
enum Entry<'a> {
    Base(&'a Resource),
    Exception(&'a str),
}

#[derive(Clone, Debug, Default)]
pub(crate) struct HeldVersions {
    /// A set the client holds entirely, apart from `exceptions`.
    base: Option<Arc<ResourceSet>>,
    /// Where the client differs from `base`: `Some(version)` held at that version, `None` not
    /// held at all. Without a base, simply every name held.
    exceptions: BTreeMap<String, Option<String>>,
}

impl HeldVersions {
    /// Every resource of `set`, at its version.
    pub fn whole(set: &Arc<ResourceSet>) -> Self {
        HeldVersions {
            base: Some(Arc::clone(set)),
            exceptions: BTreeMap::new(),
        }
    }

    /// Whether the client holds exactly `set`: nothing more, nothing less, nothing older.
    pub fn is_exactly(&self, set: &Arc<ResourceSet>) -> bool {
        self.exceptions.is_empty() && self.base.as_ref().is_some_and(|base| same_set(base, set))
    }

    /// The set held entirely (apart from the exceptions), if any.
    pub fn base(&self) -> Option<&ResourceSet> {
        self.base.as_deref()
    }

    /// The names where the client differs from the base (every name, without a base).
    pub fn exception_names(&self) -> impl Iterator<Item = &str> {
        self.exceptions.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        match self.exceptions.get(name) {
            Some(exception) => exception.as_deref(),
            None => self
                .base
                .as_ref()
                .and_then(|base| base.resources.get(name))
                .map(|resource| resource.version.as_str()),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn insert(&mut self, name: &str, version: &str) {
        if self.base_version(name) == Some(version) {
            self.exceptions.remove(name);
        } else {
            self.exceptions
                .insert(name.to_string(), Some(version.to_string()));
        }
    }

    pub fn remove(&mut self, name: &str) {
        if self.base_version(name).is_some() {
            self.exceptions.insert(name.to_string(), None);
        } else {
            self.exceptions.remove(name);
        }
    }

    /// Keeps only the names `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let base_loses_some = self
            .base
            .as_ref()
            .is_some_and(|base| base.resources.keys().any(|name| !keep(name)));
        if base_loses_some {
            self.forget_base();
        }
        self.exceptions
            .retain(|name, version| keep(name) || (version.is_none() && self.base.is_some()));
    }

    /// Every name held, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries().map(|entry| match entry {
            Entry::Base(resource) => resource.name.as_str(),
            Entry::Exception(name) => name,
        })
    }

    /// Every resource held, in name order: those held at the base's version straight from the
    /// base, the others as `lookup` finds them (skipped when it finds none).
    pub fn resources<'a>(
        &'a self,
        lookup: impl Fn(&str) -> Option<&'a Resource> + 'a,
    ) -> impl Iterator<Item = &'a Resource> {
        self.entries().filter_map(move |entry| match entry {
            Entry::Base(resource) => Some(resource),
            Entry::Exception(name) => lookup(name),
        })
    }

    fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let mut base = self
            .base
            .iter()
            .flat_map(|base| base.resources.values())
            .filter(|resource| {
                self.exceptions.is_empty() || !self.exceptions.contains_key(&resource.name)
            })
            .peekable();
        let mut extra = self
            .exceptions
            .iter()
            .filter(|(_, version)| version.is_some())
            .map(|(name, _)| name.as_str())
            .peekable();
        // Both are sorted by name and disjoint: merge them.
        std::iter::from_fn(move || match (base.peek(), extra.peek()) {
            (Some(b), Some(e)) if *e < b.name.as_str() => extra.next().map(Entry::Exception),
            (Some(_), _) => base.next().map(Entry::Base),
            (None, _) => extra.next().map(Entry::Exception),
        })
    }

    /// Whether every name held here is surely held in `before` too. Decided from the shared
    /// sets (the same names, or what the snapshot noted changing between them) and the few
    /// exceptions, never by looking every name up: this runs for a push to every stream at
    /// every edit. `false` when that cannot tell, which only costs a round trip.
    pub fn names_surely_within(&self, before: &HeldVersions) -> bool {
        let (Some(now), Some(then)) = (&self.base, &before.base) else {
            return false;
        };
        let before_holds_its_base = before.exceptions.values().all(Option::is_some);
        let base_within = now.has_names_of(then)
            || now.changes_since(then).is_some_and(|changes| {
                changes
                    .changed
                    .iter()
                    .all(|name| then.resources.contains_key(name))
            });
        before_holds_its_base
            && base_within
            && self
                .exceptions
                .iter()
                .filter(|(_, version)| version.is_some())
                .all(|(name, _)| before.contains(name))
    }

    /// The names held that `set` lacks. Walks both sorted sets side by side rather than
    /// looking every name up: this runs for every stream at every new snapshot.
    pub fn missing_from<'a>(&'a self, set: &'a ResourceSet) -> Vec<&'a str> {
        let mut missing = Vec::new();
        if let Some(base) = &self.base {
            // Usually an edit changes versions, not names: then nothing is missing.
            if !base.has_names_of(set) {
                let mut offered = set.resources.keys().peekable();
                for name in base.resources.keys() {
                    while offered.next_if(|o| *o < name).is_some() {}
                    if offered.peek() != Some(&name) && !self.exceptions.contains_key(name) {
                        missing.push(name.as_str());
                    }
                }
            }
        }
        missing.extend(
            self.exceptions
                .iter()
                .filter(|(name, version)| version.is_some() && !set.resources.contains_key(*name))
                .map(|(name, _)| name.as_str()),
        );
        missing
    }

    fn base_version(&self, name: &str) -> Option<&str> {
        self.base
            .as_ref()
            .and_then(|base| base.resources.get(name))
            .map(|resource| resource.version.as_str())
    }

    /// Turns the shared base into explicit entries (rare: a wildcard client narrowing down).
    fn forget_base(&mut self) {
        let Some(base) = self.base.take() else {
            return;
        };
        for (name, resource) in &base.resources {
            self.exceptions
                .entry(name.clone())
                .or_insert_with(|| Some(resource.version.clone()));
        }
        self.exceptions.retain(|_, version| version.is_some());
    }
}

impl FromIterator<(String, String)> for HeldVersions {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(versions: I) -> Self {
        HeldVersions {
            base: None,
            exceptions: versions
                .into_iter()
                .map(|(name, version)| (name, Some(version)))
                .collect(),
        }
    }
}

/// Sets of one type with equal versions hold the same names at the same versions: the set
/// version hashes them all.
fn same_set(a: &Arc<ResourceSet>, b: &ResourceSet) -> bool {
    std::ptr::eq(Arc::as_ptr(a), b) || a.version == b.version
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{type_url, Snapshot, SnapshotCache};
    use tollgate_proto::envoy::config::cluster::v3::Cluster;

    fn cluster_snapshot(names: &[(&str, u32)]) -> Snapshot {
        Snapshot::new(names.iter().map(|(name, timeout)| {
            let cluster = Cluster {
                name: name.to_string(),
                per_connection_buffer_limit_bytes: Some(
                    tollgate_proto::google::protobuf::UInt32Value { value: *timeout },
                ),
                ..Default::default()
            };
            (
                type_url::CLUSTER,
                Resource::new(*name, type_url::CLUSTER, &cluster),
            )
        }))
    }

    fn clusters(names: &[(&str, u32)]) -> Arc<ResourceSet> {
        Arc::clone(cluster_snapshot(names).resource_set(type_url::CLUSTER))
    }

    /// Two cluster sets, the second having replaced the first in a cache, so that it knows
    /// what changed since.
    fn replaced(older: &[(&str, u32)], newer: &[(&str, u32)]) -> [Arc<ResourceSet>; 2] {
        let cache = SnapshotCache::new();
        cache.set(cluster_snapshot(older));
        let older = Arc::clone(cache.current().unwrap().resource_set(type_url::CLUSTER));
        cache.set(cluster_snapshot(newer));
        let newer = Arc::clone(cache.current().unwrap().resource_set(type_url::CLUSTER));
        [older, newer]
    }

    fn sorted<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut names: Vec<_> = names.into_iter().collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn a_whole_set_answers_like_a_copy_of_it_through_every_change() {
        let old = clusters(&[("a", 1), ("b", 1), ("c", 1)]);
        let new = clusters(&[("a", 2), ("c", 1), ("d", 1)]);
        let mut held = HeldVersions::whole(&old);
        let mut copy: BTreeMap<String, String> = old
            .resources
            .values()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        assert!(held.is_exactly(&old));
        assert!(!held.is_exactly(&new));

        let check = |held: &HeldVersions, copy: &BTreeMap<String, String>| {
            for name in ["a", "b", "c", "d", "e"] {
                assert_eq!(held.get(name), copy.get(name).map(String::as_str), "{name}");
            }
            assert_eq!(
                held.names().collect::<Vec<_>>(),
                copy.keys().map(String::as_str).collect::<Vec<_>>()
            );
            let missing: Vec<&str> = copy
                .keys()
                .map(String::as_str)
                .filter(|n| !new.resources.contains_key(*n))
                .collect();
            assert_eq!(sorted(held.missing_from(&new)), missing);
        };
        check(&held, &copy);

        let a2 = &new.resources["a"].version;
        held.insert("a", a2);
        copy.insert("a".into(), a2.clone());
        check(&held, &copy);
        held.remove("b");
        copy.remove("b");
        check(&held, &copy);
        held.insert("e", "v");
        copy.insert("e".into(), "v".into());
        check(&held, &copy);
        held.retain(|name| name != "c");
        copy.retain(|name, _| name != "c");
        check(&held, &copy);
        held.remove("zz");
        check(&held, &copy);
    }

    #[test]
    fn pushing_a_set_back_into_agreement_leaves_no_exceptions() {
        let set = clusters(&[("a", 1), ("b", 1)]);
        let mut held = HeldVersions::whole(&set);
        held.insert("a", "other");
        assert!(!held.is_exactly(&set));
        held.insert("a", &set.resources["a"].version.clone());
        assert!(held.is_exactly(&set));
    }

    #[test]
    fn a_set_with_the_same_names_or_fewer_is_surely_within_the_one_it_replaced() {
        let [old, new] = replaced(&[("a", 1), ("b", 1)], &[("a", 2), ("b", 1)]);
        assert!(HeldVersions::whole(&new).names_surely_within(&HeldVersions::whole(&old)));
        let [old, fewer] = replaced(&[("a", 1), ("b", 1)], &[("a", 2)]);
        assert!(HeldVersions::whole(&fewer).names_surely_within(&HeldVersions::whole(&old)));
    }

    #[test]
    fn a_set_with_a_new_name_is_not_within_the_one_it_replaced() {
        let [old, more] = replaced(&[("a", 1)], &[("a", 1), ("b", 1)]);
        assert!(!HeldVersions::whole(&more).names_surely_within(&HeldVersions::whole(&old)));
    }

    #[test]
    fn exceptions_count_on_both_sides() {
        let [old, new] = replaced(&[("a", 1), ("b", 1)], &[("a", 2)]);
        let before = HeldVersions::whole(&old);
        // A removed cluster kept alive (make-before-break) was held before.
        let mut with_stale = HeldVersions::whole(&new);
        with_stale.insert("b", &old.resources["b"].version.clone());
        assert!(with_stale.names_surely_within(&before));
        let mut with_other = HeldVersions::whole(&new);
        with_other.insert("z", "v");
        assert!(!with_other.names_surely_within(&before));
        // A client known to lack part of its base may lack what is pushed.
        let mut lacking = HeldVersions::whole(&old);
        lacking.remove("a");
        assert!(!HeldVersions::whole(&new).names_surely_within(&lacking));
    }

    #[test]
    fn what_cannot_be_told_from_the_shared_sets_counts_as_new() {
        // Different names, and no record of what changed between the two sets.
        let one = clusters(&[("a", 1), ("b", 1)]);
        let other = clusters(&[("a", 1)]);
        assert!(!HeldVersions::whole(&other).names_surely_within(&HeldVersions::whole(&one)));
        // Named subscriptions have no shared set.
        let named: HeldVersions = [("a".to_string(), "1".to_string())].into_iter().collect();
        assert!(!named.names_surely_within(&named.clone()));
    }
}
