//! Loopback ports for the processes under test.
//!
//! A port is reserved by binding it and releasing it, and the process under test binds it
//! a moment later. Ports come from below Linux's ephemeral range (32768–60999 by default),
//! which every outgoing connection on the machine draws its source port from: a port
//! reserved there could be taken by any client socket in that moment. Below it, only
//! another reservation could take it, and a per-process cursor, starting at a place derived
//! from the process id, keeps reservations of one test run apart.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Reserved ports are drawn from this range, above the well-known ports.
const FIRST: u32 = 20_000;
const COUNT: u32 = 12_000;

/// Returns a loopback port that was free a moment ago.
pub fn reserve_port() -> u16 {
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start each test process at its own place in the range.
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % COUNT,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..COUNT {
        let offset = CURSOR.fetch_add(1, Ordering::Relaxed) % COUNT;
        let port = u16::try_from(FIRST + offset).expect("the range fits in u16");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT);
}

/// Returns a loopback address with a port that was free a moment ago.
pub fn reserve_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], reserve_port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_and_outside_the_ephemeral_range() {
        let ports: std::collections::HashSet<u16> = (0..100).map(|_| reserve_port()).collect();
        assert_eq!(ports.len(), 100);
        assert!(ports.iter().all(|p| (20_000..32_000).contains(p)));
    }
}
