//! Per-route request counts, status classes and latency in Envoy's Prometheus output, and
//! the control plane's own metrics.

use tollgate_conformance::{eventually, get, reserve_port, ControlPlane, Envoy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_has_its_own_request_count_status_class_and_latency() {
    let api = Upstream::new("api").spawn().await;
    let failing = Upstream::new("failing").status(500).spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            "version: 1\nlisteners: [{{name: public, address: \"127.0.0.1:{port}\"}}]\nservices:\n  api: {{endpoints: [\"{}\"]}}\n  failing: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: orders, match: {{prefix: /orders}}, service: api}}\n  - {{name: refunds, match: {{prefix: /refunds}}, service: failing}}\n",
            api.endpoint(),
            failing.endpoint()
        ))
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the orders route is served", async || {
        get(port, "/orders/1").await?.expect_upstream("api")?;
        Ok(())
    })
    .await;
    for _ in 0..3 {
        get(port, "/orders/2").await.expect("request");
        get(port, "/refunds/2").await.expect("request");
    }

    eventually("per-route series are exported", async || {
        let text = envoy.admin_get("/stats/prometheus").await?.text();
        let sample = |needle: &[&str]| {
            text.lines()
                .filter(|l| !l.starts_with('#') && needle.iter().all(|n| l.contains(n)))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        let orders_2xx = sample(&["envoy_vhost_route_upstream_rq_xx{", "envoy_response_code_class=\"2\"", "envoy_route=\"orders\""]);
        let refunds_5xx = sample(&["envoy_vhost_route_upstream_rq_xx{", "envoy_response_code_class=\"5\"", "envoy_route=\"refunds\""]);
        let orders_latency = sample(&["envoy_vhost_route_upstream_rq_time_count", "envoy_route=\"orders\""]);
        anyhow::ensure!(
            orders_2xx >= 4.0 && refunds_5xx >= 3.0 && orders_latency >= 4.0,
            "orders 2xx = {orders_2xx}, refunds 5xx = {refunds_5xx}, orders latency samples = {orders_latency}"
        );
        Ok(())
    })
    .await;

    let metrics = cp.metrics().await.expect("control plane metrics");
    assert!(
        metrics.contains("tollgate_config_reloads_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_xds_connected_nodes 1"),
        "{metrics}"
    );
}
