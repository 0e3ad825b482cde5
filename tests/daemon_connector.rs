//! The generic connector suite, run against `DaemonConnector` and a real
//! daemon: over its TCP address and over its Unix socket.

use std::sync::Arc;

use proxymesh::DaemonConnector;
use proxymesh_suite::DaemonProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_connector_passes_the_generic_suite_over_tcp_and_the_unix_socket() {
    let d = DaemonProcess::start(&[]);
    let socket = d
        .socket
        .clone()
        .expect("the daemon serves a Unix socket by default");
    assert!(socket.starts_with("unix:"), "{socket}");
    // A connector rebuilt from its config talks to the daemon named here;
    // this test binary holds this one test, so setting the variable is safe.
    for addr in [d.api.as_str(), socket.as_str()] {
        eprintln!("-- the generic suite through {addr}");
        std::env::set_var(proxymesh::api::API_ENV, addr);
        let conn = DaemonConnector::new(addr).unwrap();
        let status = conn.status().await.unwrap();
        assert_eq!(status.api_socket.as_deref(), Some(socket.as_str()));
        proxymesh::testing::run_connector_suite(Arc::new(conn)).await;
    }
}
