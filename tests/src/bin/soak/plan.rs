//! How long the soak runs and how often things happen in it, from `SOAK_*` variables.

use std::time::Duration;

use anyhow::Context as _;

/// The soak's timetable. Every period is a whole number of [`Plan::SAMPLE_EVERY`]s, so that
/// samples fall on interval ends.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The open-loop soak itself, after the capacity is measured.
    pub duration: Duration,
    /// Statistics and resource samples are reported per interval.
    pub interval: Duration,
    /// Memory and descriptors are compared from the end of the warm-up to the end.
    pub warm_up: Duration,
    pub edit_every: Duration,
    pub rotate_every: Duration,
    /// The closed-loop run that measures the capacity (after as long again unmeasured).
    pub capacity_run: Duration,
}

impl Plan {
    /// Redis keys are counted this often; process samples fall on multiples of it.
    pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

    /// `SOAK_MINUTES` (default 30), `SOAK_INTERVAL_SECS` (300), `SOAK_WARMUP_SECS` (60),
    /// `SOAK_EDIT_SECS` (10), `SOAK_ROTATE_SECS` (300), `SOAK_CAPACITY_SECS` (15).
    pub fn from_env() -> anyhow::Result<Plan> {
        let plan = Plan {
            duration: Duration::from_secs(60 * var("SOAK_MINUTES", 30)?),
            interval: secs("SOAK_INTERVAL_SECS", 300)?,
            warm_up: secs("SOAK_WARMUP_SECS", 60)?,
            edit_every: secs("SOAK_EDIT_SECS", 10)?,
            rotate_every: secs("SOAK_ROTATE_SECS", 300)?,
            capacity_run: secs("SOAK_CAPACITY_SECS", 15)?,
        };
        let step = Self::SAMPLE_EVERY.as_secs();
        for (name, period) in [
            ("SOAK_INTERVAL_SECS", plan.interval),
            ("SOAK_WARMUP_SECS", plan.warm_up),
        ] {
            anyhow::ensure!(
                period.as_secs() > 0 && period.as_secs().is_multiple_of(step),
                "{name} must be a positive multiple of {step}"
            );
        }
        anyhow::ensure!(
            plan.duration
                .as_secs()
                .is_multiple_of(plan.interval.as_secs()),
            "SOAK_MINUTES must be a whole number of intervals ({} s)",
            plan.interval.as_secs()
        );
        anyhow::ensure!(
            plan.warm_up < plan.duration,
            "the warm-up must end before the soak does"
        );
        for (name, period) in [
            ("SOAK_EDIT_SECS", plan.edit_every),
            ("SOAK_ROTATE_SECS", plan.rotate_every),
            ("SOAK_CAPACITY_SECS", plan.capacity_run),
        ] {
            anyhow::ensure!(!period.is_zero(), "{name} must be positive");
        }
        Ok(plan)
    }

    pub fn intervals(&self) -> usize {
        (self.duration.as_secs() / self.interval.as_secs()) as usize
    }
}

fn var(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("{name}={value:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn secs(name: &str, default: u64) -> anyhow::Result<Duration> {
    var(name, default).map(Duration::from_secs)
}
