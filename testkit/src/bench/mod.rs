//! What the benches measure with: the CPU time of a process they started ([`ProcStat`]) or
//! of a thread of their own ([`ServerThread`], [`ThreadCpu`]), and the latency quantile every bench
//! reports ([`percentile`]).

mod percentile;
mod proc_stat;
mod server_thread;

pub use percentile::percentile;
pub use proc_stat::{ProcStat, TICKS_PER_SECOND};
pub use server_thread::{ServerThread, Shutdown, ThreadCpu};
