//! [`ObjectWriter`]: streams one object into memory or a temp file, hashing
//! as it goes (its BLAKE3 hash and outboard, in one pass), and publishes it
//! atomically on commit.
//!
//! Memory mode buffers in one `BytesMut` while the object stays within
//! `inline_limit` and the memory budget grants each chunk; otherwise the
//! writer spills: the buffer becomes the first write to a temp file and its
//! reservation is released. Disk mode coalesces chunks into ~1 MiB buffers
//! and hands each to a blocking task (hash + `write_all`), keeping at most
//! one write in flight while the next buffer fills, so a writer holds about
//! 2 MiB however large the object.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::mem;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::budget::Reservation;
use super::error::{classify, join_error, writer_closed};
use super::index::Entry;
use super::layout::{FileGuard, FileId, Sidecar};
use super::outboard::OutboardBuilder;
use super::{Inner, Location, ObjectMeta, ObjectName, StorageError};

/// Size of the buffers handed to the disk.
pub(crate) const COALESCE: usize = 1 << 20;

/// A streaming writer for one object. Nothing is visible until
/// [`commit`](Self::commit); dropping it uncommitted discards everything
/// written (temp file and memory reservation).
pub struct ObjectWriter {
    inner: Arc<Inner>,
    name: ObjectName,
    written: u64,
    state: State,
    /// Set while a `write` runs: still set at the next call means that
    /// write's future was dropped midway, so the data may be incomplete.
    writing: bool,
}

enum State {
    Memory(Box<MemState>),
    Disk(DiskState),
    /// Committed, failed or interrupted.
    Closed,
}

struct MemState {
    buf: BytesMut,
    reservation: Reservation,
    hasher: OutboardBuilder,
}

struct DiskState {
    /// Deletes the temp file unless the commit hands it to the index.
    guard: FileGuard,
    /// Chunks waiting to be written, up to [`COALESCE`] bytes.
    pending: BytesMut,
    sink: Sink,
}

/// The temp file and the hasher, which travel together into blocking tasks.
struct Open {
    file: File,
    hasher: OutboardBuilder,
}

enum Sink {
    /// The temp file does not exist yet.
    Unopened(Box<OutboardBuilder>),
    /// A write of this many bytes is in progress.
    Busy(JoinHandle<io::Result<Open>>, usize),
    /// A write future was cancelled while the file was taken.
    Lost,
}

impl ObjectWriter {
    pub(crate) fn new(inner: Arc<Inner>, name: ObjectName, to_disk: bool) -> Self {
        let state = if to_disk {
            State::Disk(DiskState::new(&inner, OutboardBuilder::new()))
        } else {
            State::Memory(Box::new(MemState {
                buf: BytesMut::new(),
                reservation: Reservation::empty(&inner.budget),
                hasher: OutboardBuilder::new(),
            }))
        };
        Self {
            inner,
            name,
            written: 0,
            state,
            writing: false,
        }
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Where the bytes are going right now (`None` once closed).
    pub fn location(&self) -> Option<Location> {
        match self.state {
            State::Memory(_) => Some(Location::Memory),
            State::Disk(_) => Some(Location::Disk),
            State::Closed => None,
        }
    }

    /// Bytes this writer holds in process memory right now: its memory
    /// buffer, or on disk its coalescing buffer plus the write in flight.
    pub fn buffered_bytes(&self) -> u64 {
        match &self.state {
            State::Memory(m) => m.buf.len() as u64,
            State::Disk(d) => {
                let inflight = match d.sink {
                    Sink::Busy(_, n) => n,
                    _ => 0,
                };
                (d.pending.len() + inflight) as u64
            }
            State::Closed => 0,
        }
    }

    /// Append a chunk. On any error the writer discards everything and is
    /// closed.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        if self.writing {
            self.state = State::Closed;
        }
        if matches!(self.state, State::Closed) {
            return Err(writer_closed());
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let total = self.written.saturating_add(chunk.len() as u64);
        if let Some(limit) = self.inner.config.max_object_size {
            if total > limit {
                self.state = State::Closed;
                return Err(StorageError::TooLarge { size: total, limit });
            }
        }
        self.writing = true;
        let result = self.write_inner(chunk, total).await;
        self.writing = false;
        match result {
            Ok(()) => {
                self.written = total;
                Ok(())
            }
            Err(e) => {
                // Drops the guard (temp file) and the reservation.
                self.state = State::Closed;
                Err(classify(e))
            }
        }
    }

    async fn write_inner(&mut self, chunk: Bytes, total: u64) -> io::Result<()> {
        if let State::Memory(m) = &mut self.state {
            if total <= self.inner.config.inline_limit && m.reservation.try_grow(chunk.len() as u64)
            {
                m.hasher.update(&chunk);
                m.buf.extend_from_slice(&chunk);
                return Ok(());
            }
            // Spill: the buffer (already hashed) becomes the first disk write.
            let State::Memory(m) = mem::replace(&mut self.state, State::Closed) else {
                unreachable!()
            };
            let MemState {
                buf,
                reservation,
                hasher,
            } = *m;
            tracing::debug!(name = %self.name, bytes = buf.len(), "spilling object to disk");
            let mut disk = DiskState::new(&self.inner, hasher);
            let spilled = buf.freeze();
            if !spilled.is_empty() {
                disk.dispatch(&self.inner, spilled, false).await?;
            }
            drop(reservation);
            self.state = State::Disk(disk);
        }
        match &mut self.state {
            State::Disk(d) => d.push(&self.inner, chunk).await,
            _ => unreachable!("memory handled above, closed checked by caller"),
        }
    }

    /// Make the object visible, replacing any previous object of that name
    /// (whose files are removed; open readers of it keep reading it).
    pub async fn commit(mut self) -> Result<ObjectMeta, StorageError> {
        let state = mem::replace(&mut self.state, State::Closed);
        if self.writing {
            return Err(writer_closed());
        }
        let inner = Arc::clone(&self.inner);
        let persist = inner.config.persist;
        let size = self.written;
        let (entry, guard) = match state {
            State::Closed => return Err(writer_closed()),
            State::Memory(m) => {
                let (hash, pairs) = m.hasher.finish();
                let meta = ObjectMeta {
                    size,
                    hash,
                    location: Location::Memory,
                };
                // The buffer grew by doubling; keep only what is accounted.
                let data = if m.buf.capacity() - m.buf.len() > m.buf.len() / 8 {
                    Bytes::copy_from_slice(&m.buf)
                } else {
                    m.buf.freeze()
                };
                let guard = if persist {
                    let id = FileId::random();
                    let guard = FileGuard::new(&inner.layout, id);
                    let sidecar = Sidecar::new(&self.name, &meta);
                    let (layout, data) = (Arc::clone(&inner.layout), data.clone());
                    tokio::task::spawn_blocking(move || {
                        layout.write_and_publish(id, &data, Some(&sidecar))
                    })
                    .await
                    .map_err(join_error)
                    .and_then(|r| r)
                    .map_err(classify)?;
                    Some(guard)
                } else {
                    None
                };
                let entry = Entry {
                    meta,
                    memory: Some((data, m.reservation)),
                    outboard: Some(pairs.into()),
                    file: guard.as_ref().map(FileGuard::id),
                };
                (entry, guard)
            }
            State::Disk(mut d) => {
                let pending = d.pending.split().freeze();
                if !pending.is_empty() {
                    d.dispatch(&inner, pending, true).await.map_err(classify)?;
                }
                let open = d.sink.idle(&inner, d.guard.id()).await.map_err(classify)?;
                let (hash, pairs) = open.hasher.finish();
                let meta = ObjectMeta {
                    size,
                    hash,
                    location: Location::Disk,
                };
                let id = d.guard.id();
                let sidecar = persist.then(|| Sidecar::new(&self.name, &meta));
                let layout = Arc::clone(&inner.layout);
                tokio::task::spawn_blocking(move || {
                    layout.publish(id, open.file, Some(&pairs), sidecar.as_ref())
                })
                .await
                .map_err(join_error)
                .and_then(|r| r)
                .map_err(classify)?;
                let entry = Entry {
                    meta,
                    memory: None,
                    outboard: None,
                    file: Some(id),
                };
                (entry, Some(d.guard))
            }
        };
        let meta = entry.meta.clone();
        // No await between disarming and inserting: the files are always
        // owned by either the guard or the index.
        if let Some(g) = guard {
            g.disarm();
        }
        let name = self.name.clone();
        if let Some(old) = inner.index.insert(name, entry) {
            inner.discard_entry(old).await;
        }
        Ok(meta)
    }
}

impl DiskState {
    fn new(inner: &Inner, hasher: OutboardBuilder) -> Self {
        Self {
            guard: FileGuard::new(&inner.layout, FileId::random()),
            pending: BytesMut::new(),
            sink: Sink::Unopened(Box::new(hasher)),
        }
    }

    async fn push(&mut self, inner: &Inner, chunk: Bytes) -> io::Result<()> {
        if self.pending.is_empty() && chunk.len() >= COALESCE {
            return self.dispatch(inner, chunk, true).await;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve(COALESCE);
        }
        self.pending.extend_from_slice(&chunk);
        if self.pending.len() >= COALESCE {
            let full = self.pending.split().freeze();
            self.dispatch(inner, full, true).await?;
        }
        Ok(())
    }

    /// Wait for the previous write, then start writing `buf` (hashing it
    /// first unless `hash` is false) without waiting for it.
    async fn dispatch(&mut self, inner: &Inner, buf: Bytes, hash: bool) -> io::Result<()> {
        let mut open = self.sink.idle(inner, self.guard.id()).await?;
        let len = buf.len();
        let handle = tokio::task::spawn_blocking(move || {
            if hash {
                open.hasher.update(&buf);
            }
            open.file.write_all(&buf)?;
            Ok(open)
        });
        self.sink = Sink::Busy(handle, len);
        Ok(())
    }
}

impl Sink {
    /// Take the open file, creating it or waiting for the write in flight.
    /// Leaves `Lost` behind (the caller puts back `Busy`). A cancelled wait
    /// leaves `Busy`/`Unopened` in place.
    async fn idle(&mut self, inner: &Inner, id: FileId) -> io::Result<Open> {
        match self {
            Sink::Unopened(_) => {
                let layout = Arc::clone(&inner.layout);
                let file = tokio::task::spawn_blocking(move || layout.create_tmp_data(id))
                    .await
                    .map_err(join_error)??;
                let Sink::Unopened(hasher) = mem::replace(self, Sink::Lost) else {
                    unreachable!()
                };
                Ok(Open {
                    file,
                    hasher: *hasher,
                })
            }
            Sink::Busy(handle, _) => {
                let res = handle.await;
                *self = Sink::Lost;
                res.map_err(join_error)?
            }
            Sink::Lost => Err(io::Error::other(
                "an earlier write to this object was interrupted",
            )),
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if !matches!(self.state, State::Closed) {
            tracing::debug!(name = %self.name, written = self.written, "discarding uncommitted object");
            // Dropping the state removes the temp file (FileGuard) and
            // releases the memory reservation (Reservation).
            self.state = State::Closed;
        }
    }
}

impl fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("name", &self.name)
            .field("written", &self.written)
            .field("location", &self.location())
            .field("buffered", &self.buffered_bytes())
            .finish()
    }
}
