//! Where a process under test runs when not on this host's loopback: a network namespace of
//! its own, as on a host of its own, reached at the namespace's address. The conformance
//! crate creates the namespaces (and cuts them off the network); this is only what starting
//! a process there takes, so that the fixtures here (a `redis-server`) can run there too.

use std::net::IpAddr;
use std::process::Command;

/// A service's place in a network namespace: the namespace to run it in, the address to
/// bind there (where every port is free), and the address this side has on the link
/// between them, at which a process inside reaches a server here that binds it.
#[derive(Debug, Clone)]
pub struct Host {
    namespace: String,
    ip: IpAddr,
    outside_ip: IpAddr,
}

impl Host {
    /// The namespace `namespace` (`ip netns exec NAME`), at `ip`, reaching this side at
    /// `outside_ip`.
    pub fn new(namespace: &str, ip: IpAddr, outside_ip: IpAddr) -> Self {
        Self {
            namespace: namespace.to_owned(),
            ip,
            outside_ip,
        }
    }

    /// The namespace's address, which processes inside bind and this side connects to.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// This side's address on the link, which a process inside connects to.
    pub fn outside_ip(&self) -> IpAddr {
        self.outside_ip
    }

    /// `command` run inside the namespace: `ip netns exec NAME program args…`, with the
    /// same environment and working directory. `ip` execs the program, so the process
    /// spawned is the program itself and killing it kills the program.
    pub fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.namespace])
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }
}
