//! `allow_ips` and `deny_ips` through Envoy: clients on IPv4 and IPv6 loopback, rules on a
//! route and on a listener, refused with the gateway's JSON 403 by Envoy's own RBAC filter.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tollgate_conformance::{eventually, reserve_port, ControlPlane, Envoy, Upstream};

/// `GET path` over HTTP/1.1 from whichever loopback `to` is on: the status and the body.
async fn get_from(to: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(to).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n").as_bytes(),
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
