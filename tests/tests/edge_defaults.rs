//! Envoy's edge-proxy practices ("Configuring Envoy as an edge proxy") as the gateway applies
//! them: each one in Envoy's own `/config_dump`, and, for those a client can run into, the
//! offending request sent through the real Envoy and refused: a header with an underscore, too
//! many header bytes, headers sent too slowly, more HTTP/2 streams than allowed, more
//! connections than allowed, and an `x-forwarded-for` that claims another client address.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tollgate_conformance::{
    eventually, get, request, reserve_port, ControlPlane, Envoy, RunningControlPlane, RunningEnvoy,
    Upstream, UpstreamHandle, DEFAULT_PATIENCE,
};

/// Where the upstream holds its answer, so that the streams to it stay open.
const HELD: &str = "/held";

/// One gateway with a listener on the defaults and listeners that change them.
struct Edge {
    /// Defaults; refuses 203.0.113.0/24.
    defaults: u16,
    /// Behind one trusted load balancer; refuses 203.0.113.0/24.
    behind_lb: u16,
    /// 8 KiB of headers, sent within 1 s.
    tight: u16,
    /// Two connections at once.
    few: u16,
    envoy: RunningEnvoy,
    _cp: RunningControlPlane,
    _upstream: UpstreamHandle,
}

impl Edge {
    async fn start() -> Self {
        let upstream = Upstream::new("api")
            .delay(HELD, 10 * DEFAULT_PATIENCE)
            .spawn()
            .await;
        let ports @ [defaults, behind_lb, tight, few] = [
            reserve_port(),
            reserve_port(),
            reserve_port(),
            reserve_port(),
        ];
        let cp = ControlPlane::new()
            .routes(format!(
                r#"version: 1
listeners:
  - {{name: defaults, address: "127.0.0.1:{defaults}", deny_ips: [203.0.113.0/24]}}
  - {{name: behind-lb, address: "127.0.0.1:{behind_lb}", deny_ips: [203.0.113.0/24], trusted_proxies: 1}}
  - name: tight
    address: "127.0.0.1:{tight}"
    limits: {{max_request_headers_kb: 8, request_headers_timeout: 1s}}
  - {{name: few, address: "127.0.0.1:{few}", limits: {{max_connections: 2}}}}
services:
  api: {{endpoints: ["{upstream}"]}}
routes:
  # Envoy's default route timeout (15 s) would answer the held streams on a slow machine.
  - {{name: all, match: {{prefix: /}}, service: api, timeout: 5m}}
"#,
                upstream = upstream.endpoint(),
            ))
            .start()
            .await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        for port in ports {
            eventually("every listener routes to the upstream", async || {
                get(port, "/ready").await?.expect_upstream("api")?;
                Ok(())
            })
            .await;
        }
        Edge {
            defaults,
            behind_lb,
            tight,
            few,
            envoy,
            _cp: cp,
            _upstream: upstream,
        }
    }

    /// The counter `name` from Envoy's stats, 0 while Envoy has not made it.
    async fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let stats = self.envoy.stats(name).await?;
        Ok(stats.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v))
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The active listener `name` from a config dump.
fn listener<'a>(dump: &'a Value, name: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|config| config["dynamic_listeners"].as_array())
        .flatten()
        .find(|l| l["name"] == name)
        .map(|l| &l["active_state"]["listener"])
        .unwrap_or_else(|| panic!("no active listener {name} in the config dump"))
}

/// The typed config of network filter `filter` in listener `name`'s filter chain.
fn network_filter<'a>(dump: &'a Value, name: &str, filter: &str) -> &'a Value {
    listener(dump, name)["filter_chains"][0]["filters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["name"] == filter)
        .map(|f| &f["typed_config"])
        .unwrap_or_else(|| panic!("no {filter} on listener {name}"))
}

fn manager<'a>(dump: &'a Value, name: &str) -> &'a Value {
    network_filter(dump, name, "envoy.filters.network.http_connection_manager")
}

fn dumped<'a>(dump: &'a Value, kind: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(kind)))
        .unwrap_or_else(|| panic!("no {kind} in the config dump"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_config_dump_shows_every_edge_practice() {
    let edge = Edge::start().await;
    let dump = edge.envoy.config_dump().await.expect("config dump");

    // Overload manager: a heap limit with its actions, and the global connection cap.
    let overload = &dumped(&dump, "BootstrapConfigDump")["bootstrap"]["overload_manager"];
    let monitors: Vec<&str> = overload["resource_monitors"]
        .as_array()
        .expect("resource monitors")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(
        monitors.contains(&"envoy.resource_monitors.fixed_heap"),
        "{overload}"
    );
    assert!(
        monitors.contains(&"envoy.resource_monitors.global_downstream_max_connections"),
        "{overload}"
    );
    assert!(
        overload
            .to_string()
            .contains("\"max_heap_size_bytes\":\"1073741824\""),
        "{overload}"
    );
    let actions: Vec<&str> = overload["actions"]
        .as_array()
        .expect("overload actions")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "envoy.overload_actions.shrink_heap",
            "envoy.overload_actions.stop_accepting_requests"
        ]
    );

    // A listener on the defaults.
    let hcm = manager(&dump, "defaults");
    assert_eq!(hcm["use_remote_address"], true, "{hcm}");
    assert_eq!(
        hcm.get("xff_num_trusted_hops"),
        None,
        "0, left out of the dump"
    );
    assert_eq!(hcm["normalize_path"], true);
    assert_eq!(hcm["merge_slashes"], true);
    assert_eq!(hcm["path_with_escaped_slashes_action"], "REJECT_REQUEST");
    let common = &hcm["common_http_protocol_options"];
    assert_eq!(common["headers_with_underscores_action"], "REJECT_REQUEST");
    assert_eq!(common["idle_timeout"], "3600s");
    assert_eq!(hcm["max_request_headers_kb"], 60);
    assert_eq!(hcm["request_headers_timeout"], "10s");
    assert_eq!(hcm["stream_idle_timeout"], "300s");
    assert_eq!(hcm.get("request_timeout"), None, "no whole-request timeout");
    let http2 = &hcm["http2_protocol_options"];
    assert_eq!(http2["max_concurrent_streams"], 100);
    assert_eq!(http2["initial_stream_window_size"], 65536);
    assert_eq!(http2["initial_connection_window_size"], 1048576);
    assert_eq!(
        listener(&dump, "defaults")["per_connection_buffer_limit_bytes"],
        32768
    );
    let limit = network_filter(&dump, "defaults", "envoy.filters.network.connection_limit");
    assert_eq!(limit["max_connections"], "10000");

    // Listeners that change them.
    assert_eq!(manager(&dump, "behind-lb")["xff_num_trusted_hops"], 1);
    let tight = manager(&dump, "tight");
    assert_eq!(tight["max_request_headers_kb"], 8);
    assert_eq!(tight["request_headers_timeout"], "1s");
    let few = network_filter(&dump, "few", "envoy.filters.network.connection_limit");
    assert_eq!(few["max_connections"], "2");

    // The service's cluster.
    let clusters = &dumped(&dump, "ClustersConfigDump")["dynamic_active_clusters"];
    let api = clusters
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["cluster"]["name"] == "api")
        .expect("cluster api");
    assert_eq!(api["cluster"]["per_connection_buffer_limit_bytes"], 32768);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_with_an_underscore_is_refused() {
    let edge = Edge::start().await;
    let allowed = request(edge.defaults)
        .path("/x")
        .header("x-consumer-tier", "gold")
        .send()
        .await
        .expect("request");
    allowed.expect_upstream("api").expect("a hyphen is fine");
    let refused = request(edge.defaults)
        .path("/x")
        .header("x_consumer_tier", "gold")
        .send()
        .await
        .expect("request");
    refused
        .expect_status(400)
        .expect("an underscore is refused");
    assert!(
        edge.counter("http1.requests_rejected_with_underscores_in_headers")
            .await
            .expect("stats")
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_larger_than_the_listeners_limit_are_refused_with_431() {
    let edge = Edge::start().await;
    let send = async |bytes: usize| {
        request(edge.tight)
            .path("/x")
            .header("x-padding", &"a".repeat(bytes))
            .send()
            .await
            .expect("request")
    };
    send(4 * 1024)
        .await
        .expect_upstream("api")
        .expect("4 KiB is under the listener's 8 KiB");
    send(10 * 1024)
        .await
        .expect_status(431)
        .expect("10 KiB is over it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_headers_slowly_is_cut_off() {
    let edge = Edge::start().await;
    let mut client = TcpStream::connect(addr(edge.tight)).await.expect("connect");
    // Half a request: the blank line that ends the headers never comes.
    client
        .write_all(b"GET /x HTTP/1.1\r\nhost: gw.test\r\nx-a: 1\r\n")
        .await
        .expect("write");
    // The listener's request_headers_timeout is 1 s; without it, only the stream idle
    // timeout (5 min) would end this, long after the deadline.
    let mut answer = Vec::new();
    tokio::time::timeout(DEFAULT_PATIENCE, client.read_to_end(&mut answer))
        .await
        .expect("the gateway closed the connection before the deadline")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "closed, or answered 408: {answer:?}"
    );
    eventually("Envoy counts the header timeout", async || {
        let timeouts = edge
            .counter("http.tight.downstream_rq_header_timeout")
            .await?;
        anyhow::ensure!(timeouts == 1, "{timeouts} header timeouts");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_x_forwarded_for_is_not_believed_without_trusted_proxies() {
    let edge = Edge::start().await;
    let from = async |port: u16, forwarded: &str| {
        request(port)
            .path("/x")
            .header("x-forwarded-for", forwarded)
            .send()
            .await
            .expect("request")
    };
    // 203.0.113.0/24 is refused on both listeners. On the edge listener the client is the
    // connection's peer (loopback), whatever the header claims.
    from(edge.defaults, "203.0.113.7")
        .await
        .expect_upstream("api")
        .expect("the header is not believed");
    from(edge.defaults, "10.0.0.1, 203.0.113.7")
        .await
        .expect_upstream("api")
        .expect("nor is its last entry");
    // Behind one trusted load balancer, the last entry is the client's address.
    from(edge.behind_lb, "203.0.113.7")
        .await
        .expect_status(403)
        .expect("the load balancer's entry is believed");
}

/// An HTTP/2 frame header (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("a small frame");
    let mut out = length.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// `GET /held` as an HPACK block: static-table entries (RFC 7541 Appendix A) and the
/// authority as a literal without indexing, so every stream's block is the same bytes.
fn held_request_block() -> Vec<u8> {
    let mut block = vec![
        0x82, // :method GET
        0x86, // :scheme http
        0x04, // :path, literal without indexing, name from the static table
    ];
    block.push(u8::try_from(HELD.len()).expect("short"));
    block.extend(HELD.as_bytes());
    let authority = b"gw.test";
    block.push(0x01); // :authority, literal without indexing
    block.push(u8::try_from(authority.len()).expect("short"));
    block.extend(authority);
    block
}

/// Reads one frame: (type, flags, stream, payload).
async fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await?;
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await?;
    Ok((header[3], header[4], id, payload))
}

/// The value of SETTINGS_MAX_CONCURRENT_STREAMS in a SETTINGS payload.
fn max_concurrent_streams(settings: &[u8]) -> Option<u32> {
    settings.chunks_exact(6).find_map(|setting| {
        (u16::from_be_bytes([setting[0], setting[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
            .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_http2_limit_on_one_connection_are_refused() {
    let edge = Edge::start().await;
    let mut client = TcpStream::connect(addr(edge.defaults))
        .await
        .expect("connect");
    // Prior knowledge (RFC 9113 §3.3): the preface and empty SETTINGS; the gateway's SETTINGS
    // announce its limit, which the client acknowledges, as a client must before the limit
    // binds it (§6.5.3).
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    client.write_all(&out).await.expect("write");
    let handshake = async {
        loop {
            let (kind, flags, _, payload) = read_frame(&mut client).await?;
            if kind == SETTINGS && flags & ACK == 0 {
                client.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
                return anyhow::Ok(max_concurrent_streams(&payload));
            }
        }
    };
    let announced = tokio::time::timeout(DEFAULT_PATIENCE, handshake)
        .await
        .expect("the gateway's SETTINGS before the deadline")
        .expect("the handshake");
    assert_eq!(announced, Some(100), "SETTINGS_MAX_CONCURRENT_STREAMS");

    // 101 requests whose answers the upstream holds, so that every stream stays open, then
    // a PING. Envoy handles frames in order: whatever it does about stream 101 it has done
    // before it answers the PING.
    let streams = 101u32;
    let block = held_request_block();
    let mut out = Vec::new();
    for n in 0..streams {
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * n + 1, &block));
    }
    out.extend(frame(PING, 0, 0, b"edge-ok!"));
    client.write_all(&out).await.expect("write");
    let mut refusals = Vec::new();
    let exchange = async {
        loop {
            let (kind, flags, id, payload) = match read_frame(&mut client).await {
                Ok(frame) => frame,
                // Closed: Envoy's codec ends the connection on a connection error.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(false),
                Err(e) => return Err(anyhow::Error::from(e)),
            };
            match kind {
                RST_STREAM | GOAWAY => refusals.push((kind, id, payload)),
                PING if flags & ACK != 0 => return anyhow::Ok(true),
                DATA | HEADERS => anyhow::bail!("stream {id} was answered; the upstream holds"),
                _ => {}
            }
        }
    };
    let pinged = tokio::time::timeout(DEFAULT_PATIENCE, exchange)
        .await
        .expect("Envoy answered the PING or closed before the deadline")
        .expect("the exchange");
    // Over the limit the 101st stream is refused (RFC 9113 §5.1.2): reset alone, with
    // REFUSED_STREAM (0x7) or PROTOCOL_ERROR (0x1); or, as Envoy's HTTP/2 codec does once
    // the client has acknowledged the limit, as a connection error that closes the
    // connection. Either way only 100 of the streams ever reached the gateway's routes.
    let last = 2 * (streams - 1) + 1;
    let code =
        |payload: &[u8]| u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    match (pinged, refusals.as_slice()) {
        (true, [(RST_STREAM, id, payload)]) => {
            assert_eq!(*id, last, "only the stream over the limit is reset");
            assert!(matches!(code(payload), 7 | 1), "{payload:?}");
        }
        (false, []) | (false, [(GOAWAY, ..)]) => {
            let errors = edge
                .counter("http.defaults.downstream_cx_protocol_error")
                .await
                .expect("stats");
            assert_eq!(errors, 1, "the connection ended for the 101st stream");
        }
        other => panic!("expected stream {last} refused, got {other:?}"),
    }
    let admitted = edge
        .counter("http.defaults.downstream_rq_http2_total")
        .await
        .expect("stats");
    assert_eq!(admitted, 100, "HTTP/2 requests that reached the gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_listeners_limit_are_closed() {
    let edge = Edge::start().await;
    /// One request on an open keep-alive connection: its status line.
    async fn exchange(client: &mut TcpStream) -> anyhow::Result<String> {
        client
            .write_all(b"GET /x HTTP/1.1\r\nhost: gw.test\r\n\r\n")
            .await?;
        let mut buffer = vec![0u8; 64 * 1024];
        let read = client.read(&mut buffer).await?;
        Ok(String::from_utf8_lossy(&buffer[..read])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }
    // Two connections, each proven accepted by an answer, both held open. The readiness
    // checks' connections may not have been closed on Envoy's side yet: retry until both
    // are admitted.
    let mut held = eventually("two connections are admitted and held", async || {
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut client = TcpStream::connect(addr(edge.few)).await?;
            let status = exchange(&mut client).await?;
            anyhow::ensure!(status == "HTTP/1.1 200 OK", "got {status:?}");
            held.push(client);
        }
        Ok(held)
    })
    .await;
    // A third is accepted by the kernel and closed by Envoy without an answer.
    let mut third = TcpStream::connect(addr(edge.few)).await.expect("connect");
    let refused = tokio::time::timeout(DEFAULT_PATIENCE, exchange(&mut third))
        .await
        .expect("the third connection was answered or closed before the deadline");
    assert!(
        matches!(&refused, Ok(line) if line.is_empty()) || refused.is_err(),
        "the third connection is closed unanswered, got {refused:?}"
    );
    assert!(
        edge.counter("connection_limit.few.limited_connections")
            .await
            .expect("stats")
            >= 1
    );
    // One of the two closed, a new connection is accepted again.
    drop(held.pop());
    eventually("a connection is admitted once one closes", async || {
        let mut client = TcpStream::connect(addr(edge.few)).await?;
        let status = exchange(&mut client).await?;
        anyhow::ensure!(status == "HTTP/1.1 200 OK", "got {status:?}");
        Ok(())
    })
    .await;
}
