//! The fleet rows' reference: what the kernel alone charges a sender for the bytes of an
//! edit. A bare writer writes to as many loopback TCP connections as the row has nodes, each
//! as many bytes as the control plane wrote per node per edit, in one `write` per node, while
//! tasks on the bench's runtime read them as the simulated nodes do. No HTTP/2, no gRPC, no
//! xDS: the control plane cannot spend less than the writer does on the same machine in the
//! same run, whatever its code does, unless it sends fewer bytes.
//!
//! The writer is a process of its own (this binary, run as `xds_fleet bare-writer …`), as the
//! control plane is: ten thousand connections are twenty thousand descriptors in one process,
//! more than this machine allows one.

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tollgate_testkit::bench::ThreadCpu;

/// The argument that makes this binary the writer.
pub const WRITER_ARGUMENT: &str = "bare-writer";

/// A writer that has not connected everything by then has failed (it says why on stderr).
const CONNECT_DEADLINE: Duration = Duration::from_secs(120);

/// The writer's CPU time per round, one round per edit.
pub async fn cpu_per_round(nodes: usize, bytes_per_node: usize, rounds: usize) -> Vec<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut writer = Writer::start(addr, nodes, bytes_per_node);
    let mut readers = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let (mut stream, _) = tokio::time::timeout(CONNECT_DEADLINE, listener.accept())
            .await
            .expect("the bare writer connects every node (did it fail?)")
            .expect("accept a writer connection");
        readers.push(tokio::spawn(async move {
            let mut buffer = vec![0; 64 * 1024];
            while matches!(stream.read(&mut buffer).await, Ok(read) if read > 0) {}
        }));
    }
    let mut spent = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        // The writer blocks while the readers drain, so it is awaited off the runtime.
        spent.push(tokio::task::block_in_place(|| writer.round()));
    }
    drop(writer);
    for reader in readers {
        reader.abort();
    }
    spent
}

/// The writer process, connected to the bench's listener; killed when dropped.
struct Writer {
    child: Child,
    rounds: ChildStdin,
    spent: std::io::BufReader<ChildStdout>,
}

impl Writer {
    fn start(addr: SocketAddr, nodes: usize, bytes_per_node: usize) -> Writer {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .args([
                WRITER_ARGUMENT,
                &addr.to_string(),
                &nodes.to_string(),
                &bytes_per_node.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the bare writer");
        let rounds = child.stdin.take().expect("piped stdin");
        let spent = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Writer {
            child,
            rounds,
            spent,
        }
    }

    /// Has the writer write once to every connection; the CPU time that took.
    fn round(&mut self) -> Duration {
        writeln!(self.rounds).expect("the writer takes rounds");
        let mut line = String::new();
        self.spent.read_line(&mut line).expect("the writer answers");
        let nanos = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the writer answered {line:?}, not nanoseconds"));
        Duration::from_nanos(nanos)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The writer process's body: `ADDR NODES BYTES`. Opens NODES connections to ADDR; then for
/// every line on stdin writes BYTES to each and prints the nanoseconds of CPU that took.
pub fn run_writer(mut args: impl Iterator<Item = String>) {
    let mut next = |what: &str| args.next().unwrap_or_else(|| panic!("bare-writer: {what}"));
    let addr: SocketAddr = next("ADDR").parse().expect("bare-writer: ADDR");
    let nodes: usize = next("NODES").parse().expect("bare-writer: NODES");
    let bytes_per_node: usize = next("BYTES").parse().expect("bare-writer: BYTES");
    let mut connections: Vec<TcpStream> = (0..nodes)
        .map(|_| {
            let stream = TcpStream::connect(addr).expect("connect to the bench");
            // As the control plane's sockets: each write leaves at once.
            stream.set_nodelay(true).expect("nodelay");
            stream
        })
        .collect();
    let bytes = vec![0x5a_u8; bytes_per_node];
    let cpu = ThreadCpu::of_this_thread();
    let stdout = std::io::stdout();
    for round in std::io::stdin().lock().lines() {
        if round.is_err() {
            break;
        }
        let before = cpu.so_far();
        for connection in &mut connections {
            connection.write_all(&bytes).expect("a reader is draining");
        }
        let spent = cpu.so_far() - before;
        let mut out = stdout.lock();
        writeln!(out, "{}", spent.as_nanos()).expect("the bench reads");
        out.flush().expect("the bench reads");
    }
}
