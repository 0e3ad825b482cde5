//! The book of ProxyStore keys other members stored here, and how many
//! bytes each member keeps: the quota behind [`Grant::WithinQuota`](super::policy::Grant).

use libp2p::PeerId;

use crate::storage::{ObjectName, Storage};

/// Who stored which ProxyStore key here through the mesh, and how much:
/// a writer may replace only its own keys, within its quota.
#[derive(Debug, Default)]
pub(super) struct RemoteWrites {
    by_key: std::sync::Mutex<std::collections::HashMap<String, (PeerId, u64)>>,
}

impl RemoteWrites {
    /// May `peer` store `size` bytes under `key`? Forgets keys evicted meanwhile.
    pub(super) fn admit(
        &self,
        storage: &Storage,
        peer: PeerId,
        key: &str,
        size: u64,
        quota: u64,
    ) -> Result<(), String> {
        let mut map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| storage.contains(&ObjectName::Endpoint(k.clone())));
        let exists = storage.contains(&ObjectName::Endpoint(key.to_string()));
        let replaced = match map.get(key) {
            Some((writer, bytes)) if *writer == peer => *bytes,
            Some(_) => {
                return Err(format!(
                    "key {key} was stored by another daemon; only it may replace it"
                ))
            }
            None if exists => {
                return Err(format!(
                    "key {key} belongs to this site; another daemon may not replace it"
                ))
            }
            None => 0,
        };
        let used: u64 = map
            .values()
            .filter(|(p, _)| *p == peer)
            .map(|(_, b)| *b)
            .sum();
        if (used - replaced).saturating_add(size) > quota {
            return Err(format!(
                "peer {peer} already keeps {used} bytes here; {size} more exceed its quota of {quota} bytes (evict some first)"
            ));
        }
        Ok(())
    }

    pub(super) fn record(&self, peer: PeerId, key: &str, size: u64) {
        let mut map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(key.to_string(), (peer, size));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageConfig;
    use bytes::Bytes;

    async fn storage(dir: &std::path::Path) -> Storage {
        Storage::open(StorageConfig {
            dir: dir.to_path_buf(),
            memory_cap: 1 << 20,
            inline_limit: 1 << 20,
            max_object_size: None,
            persist: false,
        })
        .await
        .unwrap()
    }

    async fn put(storage: &Storage, key: &str, len: usize) {
        let mut w = storage
            .writer(ObjectName::Endpoint(key.into()), Some(len as u64))
            .unwrap();
        w.write(Bytes::from(vec![7u8; len])).await.unwrap();
        w.commit().await.unwrap();
    }

    #[tokio::test]
    async fn own_keys_within_quota_only() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path()).await;
        let book = RemoteWrites::default();
        let (a, b) = (PeerId::random(), PeerId::random());

        // A site's own key is not another daemon's to replace.
        put(&storage, "site", 10).await;
        let why = book.admit(&storage, a, "site", 10, 100).unwrap_err();
        assert!(why.contains("belongs to this site"), "{why}");

        // A writes a key; B may not replace it; A may, and the old size
        // does not count twice.
        book.admit(&storage, a, "ka", 60, 100).unwrap();
        put(&storage, "ka", 60).await;
        book.record(a, "ka", 60);
        let why = book.admit(&storage, b, "ka", 1, 100).unwrap_err();
        assert!(why.contains("another daemon"), "{why}");
        book.admit(&storage, a, "ka", 100, 100).unwrap();

        // The quota counts every key of A.
        let why = book.admit(&storage, a, "kb", 41, 100).unwrap_err();
        assert!(why.contains("quota"), "{why}");
        book.admit(&storage, a, "kb", 40, 100).unwrap();
        // B has its own quota.
        book.admit(&storage, b, "kc", 100, 100).unwrap();
        // A size announced near u64::MAX cannot wrap the sum.
        assert!(book.admit(&storage, a, "kd", u64::MAX, 100).is_err());

        // Evicted keys are forgotten: A's bytes are free again, and the key
        // is anyone's.
        storage
            .evict(&ObjectName::Endpoint("ka".into()))
            .await
            .unwrap();
        book.admit(&storage, a, "kb", 100, 100).unwrap();
        book.admit(&storage, b, "ka", 1, 100).unwrap();
    }
}
