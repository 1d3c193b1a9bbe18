//! Ephemeral loopback ports for the processes under test.
//!
//! A port is reserved by binding `127.0.0.1:0` and releasing it, so the kernel hands out a
//! port nobody is listening on; the process under test then binds it. The window between
//! release and bind is tiny and the kernel cycles through the ephemeral range, so two tests
//! running side by side do not collide in practice.

use std::net::{SocketAddr, TcpListener};

/// Returns a loopback port that was free a moment ago.
pub fn reserve_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to reserve a port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// Returns a loopback address with a port that was free a moment ago.
pub fn reserve_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], reserve_port()))
}
