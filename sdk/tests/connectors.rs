//! The conformance suite against the in-process and file connectors, plus
//! connector-specific behaviour.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use proxymesh::testing::{pattern, run_connector_suite};
use proxymesh::{Connector, ConnectorConfig, Error, FileConnector, Key, LocalConnector, ObjectId};

fn peer_key() -> Key {
    let peer = libp2p_identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    Key::on_peer(ObjectId::random(), peer)
}

#[tokio::test]
async fn local_connector_passes_the_suite() {
    run_connector_suite(Arc::new(LocalConnector::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_connector_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    run_connector_suite(Arc::new(
        FileConnector::new(dir.path().join("objects")).unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn local_config_rebuilds_the_same_instance_in_process() {
    let c = LocalConnector::new();
    let key = c.put(Bytes::from_static(b"x")).await.unwrap();
    let ConnectorConfig::Local { instance } = c.config() else {
        panic!("not a local config")
    };
    assert_eq!(instance, c.instance());
    let json = serde_json::to_string(&c.config()).unwrap();
    let rebuilt = serde_json::from_str::<ConnectorConfig>(&json)
        .unwrap()
        .connect()
        .unwrap();
    assert_eq!(rebuilt.get(&key).await.unwrap().unwrap(), "x");
    assert_eq!(c.len(), 1);
    drop(rebuilt);
    drop(c);
    // A dropped (or foreign) instance is a clear configuration error.
    let err = serde_json::from_str::<ConnectorConfig>(&json)
        .unwrap()
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[tokio::test]
async fn file_connector_layout_and_atomic_writes() {
    let dir = tempfile::tempdir().unwrap();
    let c = FileConnector::new(dir.path().join("a/b")).unwrap();
    assert!(c.dir().is_absolute());
    let key = c.put(pattern(1000, 1)).await.unwrap();
    let path = c.path_of(&key).unwrap();
    assert_eq!(path, c.dir().join(key.id.to_string()));
    assert_eq!(std::fs::read(&path).unwrap(), pattern(1000, 1));
    // Streamed puts leave no temporary files behind, also when they fail.
    let parts = futures::stream::iter((0..10).map(|i| Ok(pattern(100_000, i)))).boxed();
    c.put_stream(parts).await.unwrap();
    let failing =
        futures::stream::iter([Ok(pattern(10, 1)), Err(std::io::Error::other("boom"))]).boxed();
    assert!(c.put_stream(failing).await.is_err());
    let names: Vec<String> = std::fs::read_dir(c.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.iter().all(|n| n.parse::<ObjectId>().is_ok()),
        "{names:?}"
    );
    // Relative directories are made absolute in the config.
    let ConnectorConfig::File { dir: cfg_dir } = c.config() else {
        panic!()
    };
    assert_eq!(cfg_dir, c.dir());
}

#[tokio::test]
async fn local_and_file_reject_daemon_keys() {
    let dir = tempfile::tempdir().unwrap();
    let connectors: Vec<Arc<dyn Connector>> = vec![
        Arc::new(LocalConnector::new()),
        Arc::new(FileConnector::new(dir.path()).unwrap()),
    ];
    for c in connectors {
        let key = peer_key();
        for r in [
            c.get(&key).await.map(|_| ()),
            c.exists(&key).await.map(|_| ()),
            c.evict(&key).await,
            c.set(&key, Bytes::new()).await,
            c.get_stream(&key).await.map(|_| ()),
        ] {
            let err = r.unwrap_err();
            assert!(matches!(err, Error::WrongConnector { .. }), "{c:?}: {err}");
            assert!(err.to_string().contains(&key.ticket()), "{err}");
        }
    }
}

#[tokio::test]
async fn file_connector_shared_between_instances() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileConnector::new(dir.path()).unwrap();
    let b = FileConnector::new(dir.path()).unwrap();
    let key = a.put(Bytes::from_static(b"shared")).await.unwrap();
    assert_eq!(b.get(&key).await.unwrap().unwrap(), "shared");
    b.evict(&key).await.unwrap();
    assert!(!a.exists(&key).await.unwrap());
}
