//! Constant load through the gateway, every request accounted for phase by phase.
//!
//! A chaos test breaks one part of the chain after another while requests flow. Each kind of
//! request (a public route, a protected one with a token, …) is sent by a few paced workers
//! until the load is stopped; every request is recorded with the phase current when it was
//! sent and the one current when its answer (or error) came, and the kind's `classify`
//! function names the answer with a short label (`"200"`, `"503"`, `"429"`, …). Each
//! [`Phase`] says which labels it allows for each kind. A request is expected when a phase it
//! was in flight through allows its label: one sent just before a kill may legitimately meet
//! the dead service, and one sent while a service restarts may meet either state.
//!
//! A kill or a pause is not instant as the workers see it, so [`PhasedLoad::switch`] wraps
//! the action in a transition phase of its own, which allows what the phases either side
//! allow: a request sent between "about to kill" and "killed" may meet either state, and no
//! other request may. [`LoadReport`] tallies the records into a table, rows phases, columns
//! kind × label, and lists what was unexpected; a test that panics while the load runs
//! prints the table so far.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::http::{RequestBuilder, Response};

/// Names an answer (or the failure to get one) with a short label, and, for a label no phase
/// may allow, says what it was (status and body, or the error).
pub type Classify = fn(&anyhow::Result<Response>) -> Answer;

/// What a request got, as its kind's [`Classify`] names it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub label: String,
    /// The status and the start of the body, or the error: shown for unexpected answers.
    pub detail: String,
}

impl Answer {
    pub fn new(label: &str, detail: String) -> Self {
        Self {
            label: label.to_owned(),
            detail,
        }
    }
}

/// One kind of request the load sends over and over.
#[derive(Debug, Clone)]
pub struct Kind {
    pub name: &'static str,
    pub request: RequestBuilder,
    pub classify: Classify,
}

/// What the chain may answer each kind of request while it is in one state.
#[derive(Debug, Clone)]
pub struct Phase {
    name: String,
    allowed: BTreeMap<&'static str, BTreeSet<String>>,
    /// A transition (see [`PhasedLoad::switch`]): not held, so not required to carry traffic.
    transition: bool,
}

impl Phase {
    /// A phase that allows nothing yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            allowed: BTreeMap::new(),
            transition: false,
        }
    }

    /// This phase's allowances under another name.
    pub fn renamed(&self, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..self.clone()
        }
    }

    /// Allows exactly `labels` for `kind` (replacing what was allowed).
    pub fn only(mut self, kind: &'static str, labels: &[&str]) -> Self {
        self.allowed
            .insert(kind, labels.iter().map(|l| (*l).to_owned()).collect());
        self
    }

    /// Allows `labels` for `kind` besides what was allowed.
    pub fn also(mut self, kind: &'static str, labels: &[&str]) -> Self {
        self.allowed
            .entry(kind)
            .or_default()
            .extend(labels.iter().map(|l| (*l).to_owned()));
        self
    }

    /// Everything `self` or `other` allows, under `self`'s name.
    pub fn or(mut self, other: &Phase) -> Self {
        for (kind, labels) in &other.allowed {
            self.allowed
                .entry(kind)
                .or_default()
                .extend(labels.iter().cloned());
        }
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn allows(&self, kind: &str, label: &str) -> bool {
        self.allowed
            .get(kind)
            .is_some_and(|labels| labels.contains(label))
    }
}

/// One request of the load.
#[derive(Debug, Clone)]
pub struct Record {
    /// Index into the load's kinds.
    pub kind: usize,
    /// The phase current when it was sent, and when its answer came.
    pub sent_in: usize,
    pub answered_in: usize,
    pub sent_at: Instant,
    pub took: Duration,
    pub answer: Answer,
}

#[derive(Debug, Default)]
struct Shared {
    phase: AtomicUsize,
    stop: AtomicBool,
    records: Mutex<Vec<Record>>,
}

impl Shared {
    fn records(&self) -> MutexGuard<'_, Vec<Record>> {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Paced workers sending every kind of request until [stopped](PhasedLoad::stop).
pub struct PhasedLoad {
    kinds: Vec<Kind>,
    phases: Vec<Phase>,
    entered: Instant,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl PhasedLoad {
    /// Starts `workers_per_kind` workers for each kind, each sending at most one request
    /// every `pace`, in phase `first`.
    pub fn start(kinds: Vec<Kind>, workers_per_kind: usize, pace: Duration, first: Phase) -> Self {
        let shared = Arc::new(Shared::default());
        let mut workers = Vec::new();
        for (index, kind) in kinds.iter().enumerate() {
            for _ in 0..workers_per_kind {
                workers.push(tokio::spawn(work(
                    index,
                    kind.clone(),
                    pace,
                    shared.clone(),
                )));
            }
        }
        Self {
            kinds,
            phases: vec![first],
            entered: Instant::now(),
            shared,
            workers,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        self.phases.last().expect("the load starts in a phase")
    }

    /// Enters `next`: requests sent from now on are judged by it (and by any phase they are
    /// still in flight in).
    pub fn enter(&mut self, next: Phase) {
        eprintln!("phase: {}", next.name);
        self.phases.push(next);
        self.entered = Instant::now();
        self.shared
            .phase
            .store(self.phases.len() - 1, Ordering::SeqCst);
    }

    /// Runs `action` (a kill, a pause) inside a transition phase that allows what the
    /// current phase and `next` allow, then enters `next`: no request can meet the new state
    /// while being judged by the old phase alone, nor the old state by `next` alone.
    pub async fn switch<T>(&mut self, next: Phase, action: impl Future<Output = T>) -> T {
        let mut transition = self
            .phase()
            .clone()
            .or(&next)
            .renamed(&format!("-> {}", next.name));
        transition.transition = true;
        self.enter(transition);
        let output = action.await;
        self.enter(next);
        output
    }

    /// Lets the load run in the current phase for at least `at_least`, and until every kind
    /// has had `per_kind` requests sent in this phase answered; panics after `patience`.
    pub async fn hold(&self, at_least: Duration, per_kind: usize, patience: Duration) {
        let phase = self.phases.len() - 1;
        let entered = self.entered;
        let what = format!("phase {:?} carries its traffic", self.phase().name);
        crate::eventually_within(patience, &what, async || {
            let counts = self.sent_in(phase);
            let short: Vec<_> = self
                .kinds
                .iter()
                .enumerate()
                .filter(|(i, _)| counts[*i] < per_kind)
                .map(|(i, kind)| format!("{} {}", kind.name, counts[i]))
                .collect();
            anyhow::ensure!(short.is_empty(), "answered so far: {}", short.join(", "));
            anyhow::ensure!(
                entered.elapsed() >= at_least,
                "{:?} of {at_least:?}",
                entered.elapsed()
            );
            Ok(())
        })
        .await;
    }

    /// Answered requests of each kind sent in phase `phase`.
    fn sent_in(&self, phase: usize) -> Vec<usize> {
        let mut counts = vec![0; self.kinds.len()];
        for record in self.shared.records().iter() {
            if record.sent_in == phase {
                counts[record.kind] += 1;
            }
        }
        counts
    }

    /// Fails unless, for every kind, at least `latest` requests sent since `since` were
    /// answered and the latest `latest` of them were all as `normal` allows, and unless each
    /// `(kind, label)` of `seen` was answered at least once since `since`: the chain is back.
    pub fn recovered(
        &self,
        since: Instant,
        latest: usize,
        normal: &Phase,
        seen: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let records = self.shared.records();
        for (index, kind) in self.kinds.iter().enumerate() {
            let mut answers: Vec<&Record> = records
                .iter()
                .filter(|r| r.kind == index && r.sent_at >= since)
                .collect();
            answers.sort_by_key(|r| r.sent_at);
            anyhow::ensure!(
                answers.len() >= latest,
                "{}: {} answered since",
                kind.name,
                answers.len()
            );
            let tail = &answers[answers.len() - latest..];
            let odd: Vec<&str> = tail
                .iter()
                .filter(|r| !normal.allows(kind.name, &r.answer.label))
                .map(|r| r.answer.label.as_str())
                .collect();
            anyhow::ensure!(odd.is_empty(), "{}: latest answers {odd:?}", kind.name);
        }
        for (kind, label) in seen {
            let index = self
                .kinds
                .iter()
                .position(|k| k.name == *kind)
                .unwrap_or_else(|| panic!("no kind {kind:?}"));
            anyhow::ensure!(
                records
                    .iter()
                    .any(|r| r.kind == index && r.sent_at >= since && r.answer.label == *label),
                "no {kind} {label} since"
            );
        }
        Ok(())
    }

    /// Stops the workers after the requests they have in flight and reports every request.
    pub async fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        for worker in self.workers.drain(..) {
            if let Err(error) = worker.await {
                panic!("a load worker failed: {error}");
            }
        }
        let records = std::mem::take(&mut *self.shared.records());
        LoadReport {
            kinds: self.kinds.iter().map(|k| k.name).collect(),
            phases: std::mem::take(&mut self.phases),
            records,
        }
    }
}

impl Drop for PhasedLoad {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
        // A test that fails before stopping the load (a service that never recovered)
        // still shows what every request got so far.
        if std::thread::panicking() && !self.phases.is_empty() {
            let report = LoadReport {
                kinds: self.kinds.iter().map(|k| k.name).collect(),
                phases: self.phases.clone(),
                records: self.shared.records().clone(),
            };
            eprintln!(
                "load so far:\n{}{}",
                report.table(),
                report.describe_unexpected(20)
            );
        }
    }
}

async fn work(index: usize, kind: Kind, pace: Duration, shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(pace);
    // A slow answer must not be followed by a burst making up for it.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !shared.stop.load(Ordering::SeqCst) {
        ticks.tick().await;
        let sent_in = shared.phase.load(Ordering::SeqCst);
        let sent_at = Instant::now();
        let result = kind.request.send().await;
        let answered_in = shared.phase.load(Ordering::SeqCst);
        let took = sent_at.elapsed();
        let answer = (kind.classify)(&result);
        shared.records().push(Record {
            kind: index,
            sent_in,
            answered_in,
            sent_at,
            took,
            answer,
        });
    }
}

/// Every request of a stopped load, with the phases it ran through.
#[derive(Debug)]
pub struct LoadReport {
    kinds: Vec<&'static str>,
    phases: Vec<Phase>,
    pub records: Vec<Record>,
}

impl LoadReport {
    /// Whether a phase the request was in flight through allows its answer.
    pub fn expected(&self, record: &Record) -> bool {
        let kind = self.kinds[record.kind];
        self.phases[record.sent_in..=record.answered_in]
            .iter()
            .any(|phase| phase.allows(kind, &record.answer.label))
    }

    /// The unexpected requests, in the order they were sent.
    pub fn unexpected(&self) -> Vec<&Record> {
        let mut unexpected: Vec<&Record> =
            self.records.iter().filter(|r| !self.expected(r)).collect();
        unexpected.sort_by_key(|r| r.sent_at);
        unexpected
    }

    fn phase_index(&self, phase: &str) -> usize {
        self.phases
            .iter()
            .position(|p| p.name == phase)
            .unwrap_or_else(|| panic!("no phase {phase:?}"))
    }

    fn kind_index(&self, kind: &str) -> usize {
        self.kinds
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_else(|| panic!("no kind {kind:?}"))
    }

    /// Requests of `kind` sent in `phase` that got `label`.
    pub fn count(&self, phase: &str, kind: &str, label: &str) -> usize {
        let (phase, kind) = (self.phase_index(phase), self.kind_index(kind));
        self.records
            .iter()
            .filter(|r| r.sent_in == phase && r.kind == kind && r.answer.label == label)
            .count()
    }

    /// The longest a request of `kind` sent in `phase` took.
    pub fn slowest(&self, phase: &str, kind: &str) -> Duration {
        let (phase, kind) = (self.phase_index(phase), self.kind_index(kind));
        self.records
            .iter()
            .filter(|r| r.sent_in == phase && r.kind == kind)
            .map(|r| r.took)
            .max()
            .unwrap_or_default()
    }

    /// `(phase, kind, requests)` for every held phase and kind that carried fewer than
    /// `at_least` requests.
    pub fn thin_phases(&self, at_least: usize) -> Vec<(String, &'static str, usize)> {
        let mut thin = Vec::new();
        for (p, phase) in self.phases.iter().enumerate() {
            if phase.transition {
                continue;
            }
            for (k, kind) in self.kinds.iter().enumerate() {
                let n = self
                    .records
                    .iter()
                    .filter(|r| r.sent_in == p && r.kind == k)
                    .count();
                if n < at_least {
                    thin.push((phase.name.clone(), *kind, n));
                }
            }
        }
        thin
    }

    /// Rows: phases (by the phase a request was sent in); columns: how many requests of each
    /// kind got each label, then how many of the row were unexpected.
    pub fn table(&self) -> String {
        // Columns: every (kind, label) some phase allows, then any other label seen.
        let mut columns: Vec<(usize, String)> = Vec::new();
        for (k, kind) in self.kinds.iter().enumerate() {
            let mut labels: BTreeSet<String> = self
                .phases
                .iter()
                .filter_map(|p| p.allowed.get(kind))
                .flatten()
                .cloned()
                .collect();
            labels.extend(
                self.records
                    .iter()
                    .filter(|r| r.kind == k)
                    .map(|r| r.answer.label.clone()),
            );
            columns.extend(labels.into_iter().map(|label| (k, label)));
        }
        let headers: Vec<String> = columns
            .iter()
            .map(|(k, label)| format!("{} {label}", self.kinds[*k]))
            .collect();
        let name_width = self
            .phases
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut counts = vec![vec![0usize; columns.len()]; self.phases.len()];
        let mut unexpected = vec![0usize; self.phases.len()];
        for record in &self.records {
            if let Some(c) = columns
                .iter()
                .position(|(k, label)| *k == record.kind && *label == record.answer.label)
            {
                counts[record.sent_in][c] += 1;
            }
            if !self.expected(record) {
                unexpected[record.sent_in] += 1;
            }
        }
        let mut table = String::new();
        let mut line = format!("{:<name_width$}", "phase");
        for header in &headers {
            let _ = write!(line, " | {header}");
        }
        line.push_str(" | unexpected");
        let rule = "-".repeat(line.len());
        let _ = writeln!(table, "{line}\n{rule}");
        let mut totals = vec![0usize; columns.len()];
        for (p, phase) in self.phases.iter().enumerate() {
            let mut line = format!("{:<name_width$}", phase.name);
            for (c, header) in headers.iter().enumerate() {
                totals[c] += counts[p][c];
                let _ = write!(line, " | {:>width$}", counts[p][c], width = header.len());
            }
            let _ = write!(line, " | {:>10}", unexpected[p]);
            let _ = writeln!(table, "{line}");
        }
        let mut line = format!("{:<name_width$}", "all");
        for (c, header) in headers.iter().enumerate() {
            let _ = write!(line, " | {:>width$}", totals[c], width = header.len());
        }
        let _ = write!(line, " | {:>10}", unexpected.iter().sum::<usize>());
        let _ = writeln!(table, "{rule}\n{line}");
        table
    }

    /// One line per unexpected request (at most `limit`): phases, kind, answer, timing.
    pub fn describe_unexpected(&self, limit: usize) -> String {
        let start = self.records.iter().map(|r| r.sent_at).min();
        let mut text = String::new();
        for record in self.unexpected().into_iter().take(limit) {
            let at = start.map(|s| record.sent_at - s).unwrap_or_default();
            let _ = writeln!(
                text,
                "[{sent} -> {answered}] {kind} sent at {at:.2?}, took {took:.2?}: {label}: {detail}",
                sent = self.phases[record.sent_in].name,
                answered = self.phases[record.answered_in].name,
                kind = self.kinds[record.kind],
                took = record.took,
                label = record.answer.label,
                detail = record.answer.detail,
            );
        }
        text
    }
}
