//! Range reads: which bytes an HTTP `Range` asks for, and reading them from
//! an object held here, each 16 KiB chunk group checked against the
//! object's BLAKE3 hash (through its outboard) before it is handed out.
//! Protocol and storage logic only: no sockets.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};

use crate::mesh::verified::{RangeDecoder, Step};
use crate::storage::outboard::{encode_range, Data};
use crate::storage::{ChunkStream, ObjectReader};

/// One byte range of an HTTP `Range: bytes=…` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-last` (`last` inclusive) or `first-` (`last: None`).
    From { first: u64, last: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parse a `Range` header value. `Ok(None)`: a form this server serves
    /// whole (several ranges, another unit), as HTTP allows; `Err`: a
    /// malformed `bytes` range.
    pub fn parse(header: &str) -> Result<Option<ByteRange>, String> {
        let Some(spec) = header.trim().strip_prefix("bytes=") else {
            return Ok(None);
        };
        if spec.contains(',') {
            return Ok(None);
        }
        let bad = || {
            format!(
                "malformed range {header:?}: expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-N"
            )
        };
        let (first, last) = spec.trim().split_once('-').ok_or_else(bad)?;
        let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
        match (first.trim().is_empty(), last.trim().is_empty()) {
            (true, true) => Err(bad()),
            (true, false) => Ok(Some(ByteRange::Suffix(num(last)?))),
            (false, true) => Ok(Some(ByteRange::From {
                first: num(first)?,
                last: None,
            })),
            (false, false) => {
                let (first, last) = (num(first)?, num(last)?);
                if last < first {
                    return Err(bad());
                }
                Ok(Some(ByteRange::From {
                    first,
                    last: Some(last),
                }))
            }
        }
    }

    /// `(offset, len)` of the range in an object of `size` bytes (a last
    /// byte past the end is cut to it), or `None` when no byte of it is in
    /// the object (HTTP's 416).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From { first, .. } if first >= size => None,
            ByteRange::From { first, last } => {
                let end = last.map_or(size, |l| l.saturating_add(1).min(size));
                Some((first, end - first))
            }
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(n) => {
                let n = n.min(size);
                (n > 0).then_some((size - n, n))
            }
        }
    }
}

/// Bytes read and checked per step.
const STEP: u64 = 1 << 20;

/// Bytes `offset..offset + len` of an object held here, verified group by
/// group against `reader`'s hash through its outboard: a damaged byte
/// ends the stream with an error before its group is handed out.
pub fn verified_read(reader: ObjectReader, offset: u64, len: u64) -> ChunkStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = read_into(reader, offset, len, &tx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn read_into(
    reader: ObjectReader,
    offset: u64,
    len: u64,
    tx: &tokio::sync::mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    let meta = reader.meta().clone();
    let outboard = reader.outboard()?;
    let (memory, file) = match reader {
        ObjectReader::Memory { data, .. } => (Some(data), None),
        ObjectReader::File { file, .. } => (
            None,
            Some(tokio::runtime::Handle::current().block_on(file.into_std())),
        ),
    };
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = STEP.min(end - at);
        // Encoded straight into the buffer the decoder reads (no copy).
        let mut encoded = BytesMut::with_capacity(n as usize + 4096).writer();
        let data = match (&memory, &file) {
            (Some(bytes), _) => Data::Memory(bytes),
            (_, Some(f)) => Data::File(f),
            (None, None) => unreachable!("a reader holds bytes or a file"),
        };
        encode_range(data, &outboard, at, n, &mut encoded)?;
        let mut decoder = RangeDecoder::new(meta.hash, meta.size, at, n);
        let mut buf = encoded.into_inner();
        loop {
            match decoder.next(&mut buf) {
                Ok(Step::Data(_, bytes)) if !bytes.is_empty() => {
                    if tx.blocking_send(Ok(bytes)).is_err() {
                        return Ok(()); // the reader went away
                    }
                }
                Ok(Step::Data(..) | Step::Parent(..)) => {}
                Ok(Step::Done) => break,
                Ok(Step::NeedMore(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the stored object (BLAKE3 {}) is shorter than its {} bytes", meta.hash, meta.size),
                    ))
                }
                Err(m) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the stored object is damaged: the bytes at offset {} do not match its BLAKE3 {}",
                            m.offset, meta.hash
                        ),
                    ))
                }
            }
        }
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_resolve_as_http_says() {
        let p = |s: &str| ByteRange::parse(s).unwrap().unwrap();
        assert_eq!(p("bytes=0-99").resolve(1000), Some((0, 100)));
        assert_eq!(p("bytes=900-").resolve(1000), Some((900, 100)));
        assert_eq!(p("bytes=900-5000").resolve(1000), Some((900, 100)));
        assert_eq!(p("bytes=-10").resolve(1000), Some((990, 10)));
        assert_eq!(p("bytes=-5000").resolve(1000), Some((0, 1000)));
        assert_eq!(p("bytes=999-999").resolve(1000), Some((999, 1)));
        assert_eq!(p("bytes=1000-").resolve(1000), None);
        assert_eq!(p("bytes=-0").resolve(1000), None);
        assert_eq!(p("bytes=0-").resolve(0), None);
        // Served whole: other units, several ranges.
        assert_eq!(ByteRange::parse("items=0-1"), Ok(None));
        assert_eq!(ByteRange::parse("bytes=0-1,5-6"), Ok(None));
        for bad in ["bytes=", "bytes=-", "bytes=a-b", "bytes=5-1", "bytes=1"] {
            assert!(ByteRange::parse(bad).is_err(), "{bad}");
        }
    }
}
