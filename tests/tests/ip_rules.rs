//! `allow_ips` and `deny_ips` through Envoy: clients on IPv4 and IPv6 loopback, rules on a
//! route and on a listener, refused with the gateway's JSON 403 by Envoy's own RBAC filter.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tollgate_conformance::{eventually, reserve_port, ControlPlane, Envoy, Upstream};

/// `GET path` over HTTP/1.1 from whichever loopback `to` is on: the status and the body.
async fn get_from(to: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    get_forwarded(to, path, None).await
}

/// `GET path` with `x-forwarded-for: forwarded`, as a load balancer in front would send it.
async fn get_forwarded(
    to: SocketAddr,
    path: &str,
    forwarded: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(to).await?;
    let forwarded = forwarded
        .map(|chain| format!("x-forwarded-for: {chain}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: gw.test\r\n{forwarded}connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rules_admit_and_refuse_clients_by_address_on_routes_and_listeners() {
    let app = Upstream::new("app").spawn().await;
    let (v4, v6, fenced) = (reserve_port(), reserve_port(), reserve_port());
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - {{name: v4, address: "127.0.0.1:{v4}"}}
  - {{name: v6, address: "[::1]:{v6}"}}
  - name: fenced
    address: "127.0.0.1:{fenced}"
    allow_ips: [10.0.0.0/8]
services:
  app: {{endpoints: ["{app}"]}}
routes:
  - name: admin
    match: {{prefix: /admin/}}
    service: app
    allow_ips: [127.0.0.0/8]
  - name: no-v6
    match: {{prefix: /no-v6/}}
    service: app
    deny_ips: ["::1"]
  - name: open
    match: {{prefix: /}}
    service: app
"#,
            app = app.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    let v4: SocketAddr = format!("127.0.0.1:{v4}").parse().expect("address");
    let v6: SocketAddr = format!("[::1]:{v6}").parse().expect("address");
    let fenced: SocketAddr = format!("127.0.0.1:{fenced}").parse().expect("address");

    eventually("both listeners serve the open route", async || {
        for to in [v4, v6] {
            let (status, _) = get_from(to, "/hello").await?;
            anyhow::ensure!(status == 200, "{to}: {status}");
        }
        Ok(())
    })
    .await;
    for (to, path, expected) in [
        (v4, "/admin/users", 200),
        (v6, "/admin/users", 403),
        (v4, "/no-v6/x", 200),
        (v6, "/no-v6/x", 403),
        (v6, "/open/x", 200),
        // The listener admits only 10.0.0.0/8: its routes refuse loopback clients, its
        // health path still answers.
        (fenced, "/hello", 403),
        (fenced, "/admin/users", 403),
        (fenced, "/health", 200),
    ] {
        let (status, body) = get_from(to, path).await.expect("an answer");
        assert_eq!(status, expected, "{to}{path}: {body}");
        if status == 403 {
            let json: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{to}{path}: {e}: {body:?}"));
            assert_eq!(json["error"], "forbidden", "{to}{path}: {body}");
        }
    }
    assert!(
        app.paths()
            .iter()
            .all(|p| !p.starts_with("/no-v6") || p == "/no-v6/x"),
        "{:?}",
        app.paths()
    );
    assert_eq!(
        app.paths()
            .iter()
            .filter(|p| p.as_str() == "/admin/users")
            .count(),
        1,
        "only the admitted admin request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_the_client_is_read_from_x_forwarded_for_and_nowhere_else() {
    let app = Upstream::new("app").spawn().await;
    let (behind_lb, edge) = (reserve_port(), reserve_port());
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - {{name: behind-lb, address: "127.0.0.1:{behind_lb}", trusted_proxies: 1}}
  - {{name: edge, address: "127.0.0.1:{edge}"}}
services:
  app: {{endpoints: ["{app}"]}}
routes:
  - name: partners
    match: {{prefix: /partners/}}
    service: app
    allow_ips: [203.0.113.0/24]
  - {{name: open, match: {{prefix: /}}, service: app}}
"#,
            app = app.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    let behind_lb: SocketAddr = format!("127.0.0.1:{behind_lb}").parse().expect("address");
    let edge: SocketAddr = format!("127.0.0.1:{edge}").parse().expect("address");
    eventually("both listeners serve the open route", async || {
        for to in [behind_lb, edge] {
            let (status, _) = get_from(to, "/hello").await?;
            anyhow::ensure!(status == 200, "{to}: {status}");
        }
        Ok(())
    })
    .await;
    for (to, forwarded, expected, why) in [
        (
            behind_lb,
            Some("203.0.113.7"),
            200,
            "the load balancer vouches for the client",
        ),
        // The client prepended its own entry; the load balancer appended the real one.
        (
            behind_lb,
            Some("203.0.113.9, 198.51.100.4"),
            403,
            "only the trusted hop counts",
        ),
        (
            behind_lb,
            None,
            403,
            "without the header the client is the load balancer",
        ),
        (
            edge,
            Some("203.0.113.7"),
            403,
            "at the edge x-forwarded-for is the client's word",
        ),
    ] {
        let (status, body) = get_forwarded(to, "/partners/x", forwarded)
            .await
            .expect("an answer");
        assert_eq!(status, expected, "{to} {forwarded:?}: {why}: {body}");
    }
}
