//! The generic connector suite, run against `DaemonConnector` and a real daemon.

use std::sync::Arc;

use proxymesh::DaemonConnector;
use proxymesh_suite::DaemonProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_connector_passes_the_generic_suite() {
    let d = DaemonProcess::start(&[]);
    // A connector rebuilt from its config talks to the daemon named here;
    // this test binary holds this one test, so setting the variable is safe.
    std::env::set_var(proxymesh::api::API_ENV, &d.api);
    proxymesh::testing::run_connector_suite(Arc::new(DaemonConnector::new(&d.api).unwrap())).await;
}
