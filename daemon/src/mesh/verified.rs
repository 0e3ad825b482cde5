//! Checking a verified range as it arrives, without sockets.
//!
//! A server answers a get with the bao encoding of the range (see
//! [`encode_range`](crate::storage::outboard::encode_range)): parent hash
//! pairs and leaves (16 KiB chunk groups, or single chunks at the range's
//! edges) in pre-order. [`RangeDecoder`] takes the bytes as they arrive in
//! a buffer and hands out each leaf only after it checked it against the
//! object's BLAKE3 hash, through every parent on its way to the root, so
//! a wrong byte is caught within the chunk group it sits in and no byte
//! is handed out before it is proven.

use std::collections::VecDeque;

use bao_tree::iter::{BaoChunk, ResponseIter};
use bao_tree::TreeNode;
use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use bytes::{Bytes, BytesMut};

use crate::storage::outboard::{chunk_ranges, tree};

/// What [`RangeDecoder::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The buffer holds too few bytes for the next item: at least this many
    /// are needed in all.
    NeedMore(usize),
    /// Verified bytes of the range, starting at this object offset (already
    /// cut to the range asked for; may be empty at the range's edges).
    Data(u64, Bytes),
    /// A parent (its node and hash pair, as the outboard keeps it) was
    /// checked; call again.
    Parent(TreeNode, [u8; 64]),
    /// The whole range arrived and checked.
    Done,
}

/// Bytes that do not belong to the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the bytes at offset {offset} do not match the object's BLAKE3 hash")]
pub struct Mismatch {
    /// The first byte of the item (leaf or subtree) that failed.
    pub offset: u64,
}

/// Decodes and verifies the encoding of bytes `start..end` of one object.
pub struct RangeDecoder {
    iter: ResponseIter,
    /// The next items, taken from `iter` but not yet read.
    queue: VecDeque<BaoChunk>,
    /// Their encoded size.
    queued: usize,
    /// Hashes still expected, the next one on top.
    stack: Vec<blake3::Hash>,
    start: u64,
    end: u64,
    /// Encoded bytes consumed so far.
    consumed: u64,
    /// The hash announced for an empty object, until it is checked.
    empty_object: Option<blake3::Hash>,
}

impl std::fmt::Debug for RangeDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeDecoder")
            .field("range", &(self.start..self.end))
            .field("consumed", &self.consumed)
            .finish()
    }
}

impl RangeDecoder {
    /// Expect bytes `offset..offset + len` of an object of `size` bytes
    /// whose BLAKE3 hash is `root`.
    pub fn new(root: blake3::Hash, size: u64, offset: u64, len: u64) -> Self {
        let ranges = chunk_ranges(offset, len, size);
        let empty = ranges.is_empty();
        let mut iter = ResponseIter::new(tree(size), ranges);
        // An empty range carries nothing to check, except that an empty
        // object's hash is the hash of nothing.
        let mut queue = VecDeque::new();
        let mut queued = 0;
        if !empty {
            if let Some(item) = iter.next() {
                queued += encoded_len(&item);
                queue.push_back(item);
            }
        }
        let empty_object = (size == 0).then_some(root);
        Self {
            empty_object,
            iter,
            queue,
            queued,
            stack: vec![root],
            start: offset,
            end: offset + len,
            consumed: 0,
        }
    }

    /// Encoded bytes read so far (data and hashes).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Whether every item of the range was read and checked.
    pub fn is_done(&self) -> bool {
        self.queue.is_empty() && self.empty_object.is_none()
    }

    /// How many encoded bytes the next items take, counting items until
    /// `limit` is reached (at least the next item, however large): what
    /// may be read from the stream without reading past this answer.
    pub fn ahead(&mut self, limit: usize) -> usize {
        while self.queued < limit {
            let Some(item) = self.iter.next() else { break };
            self.queued += encoded_len(&item);
            self.queue.push_back(item);
        }
        self.queued
    }

    /// Take the next item from the front of `buf` if it is all there.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Step, Mismatch> {
        if let Some(root) = self.empty_object.take() {
            if root != blake3::hash(b"") {
                return Err(Mismatch { offset: 0 });
            }
        }
        let Some(item) = self.queue.pop_front() else {
            return Ok(Step::Done);
        };
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                if buf.len() < 64 {
                    self.queue.push_front(item);
                    return Ok(Step::NeedMore(64));
                }
                self.queued -= 64;
                let raw: [u8; 64] = buf.split_to(64)[..].try_into().expect("64 bytes");
                self.consumed += 64;
                let l: ChainingValue = raw[..32].try_into().expect("32 bytes");
                let r: ChainingValue = raw[32..].try_into().expect("32 bytes");
                let want = self.stack.pop().expect("a hash for every item");
                let got = if is_root {
                    merge_subtrees_root(&l, &r, Mode::Hash)
                } else {
                    merge_subtrees_non_root(&l, &r, Mode::Hash).into()
                };
                if got != want {
                    return Err(Mismatch {
                        offset: node.chunk_range().start.to_bytes(),
                    });
                }
                if right {
                    self.stack.push(r.into());
                }
                if left {
                    self.stack.push(l.into());
                }
                self.refill();
                Ok(Step::Parent(node, raw))
            }
            BaoChunk::Leaf {
                start_chunk,
                size,
                is_root,
                ..
            } => {
                if buf.len() < size {
                    self.queue.push_front(item);
                    return Ok(Step::NeedMore(size));
                }
                self.queued -= size;
                let data = buf.split_to(size).freeze();
                self.consumed += size as u64;
                let want = self.stack.pop().expect("a hash for every item");
                let at = start_chunk.to_bytes();
                let got = if is_root {
                    blake3::hash(&data)
                } else {
                    let mut h = blake3::Hasher::new();
                    h.set_input_offset(at);
                    h.update(&data);
                    h.finalize_non_root().into()
                };
                if got != want {
                    return Err(Mismatch { offset: at });
                }
                self.refill();
                // Cut to the range asked for.
                let from = self.start.clamp(at, at + size as u64);
                let to = self.end.clamp(at, at + size as u64);
                let data = data.slice((from - at) as usize..(to - at) as usize);
                Ok(Step::Data(from, data))
            }
        }
    }
}

impl RangeDecoder {
    /// Keep at least the next item queued.
    fn refill(&mut self) {
        if self.queue.is_empty() {
            if let Some(item) = self.iter.next() {
                self.queued += encoded_len(&item);
                self.queue.push_back(item);
            }
        }
    }
}

fn encoded_len(item: &BaoChunk) -> usize {
    match item {
        BaoChunk::Parent { .. } => 64,
        BaoChunk::Leaf { size, .. } => *size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::outboard::{encode_range, reference, Data, Outboard, BLOCK_BYTES};

    fn object(n: usize) -> (Vec<u8>, Outboard) {
        let d: Vec<u8> = (0..n).map(|i| (i * 13 + i / 1000) as u8).collect();
        let (root, pairs) = reference(&d);
        let ob = Outboard::memory(root, n as u64, pairs.into());
        (d, ob)
    }

    fn encode(d: &[u8], ob: &Outboard, offset: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_range(Data::Memory(d), ob, offset, len, &mut out).unwrap();
        out
    }

    /// Feed `enc` in pieces of `piece` bytes; the data handed out, or the error.
    fn decode(
        root: blake3::Hash,
        size: u64,
        offset: u64,
        len: u64,
        enc: &[u8],
        piece: usize,
    ) -> (Vec<u8>, Result<(), Mismatch>) {
        let mut dec = RangeDecoder::new(root, size, offset, len);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut next_at = offset;
        loop {
            match dec.next(&mut buf) {
                Ok(Step::NeedMore(n)) => {
                    if fed == enc.len() {
                        panic!("the encoding ended early");
                    }
                    // Never more than this answer holds.
                    let may = dec.ahead(piece.min(1 << 20));
                    assert!(may >= n && may > buf.len(), "ahead {may}, need {n}");
                    let take = piece.min(enc.len() - fed).min(may - buf.len());
                    buf.extend_from_slice(&enc[fed..fed + take]);
                    fed += take;
                }
                Ok(Step::Data(at, data)) => {
                    assert_eq!(at, next_at, "contiguous");
                    next_at += data.len() as u64;
                    out.extend_from_slice(&data);
                }
                Ok(Step::Parent(..)) => {}
                Ok(Step::Done) => {
                    assert_eq!(fed, enc.len(), "every encoded byte used");
                    assert!(buf.is_empty());
                    assert_eq!(dec.consumed(), enc.len() as u64);
                    return (out, Ok(()));
                }
                Err(e) => return (out, Err(e)),
            }
        }
    }

    #[test]
    fn ranges_decode_to_their_bytes() {
        let b = BLOCK_BYTES as u64;
        for size in [0u64, 1, 1000, b, b + 1, 5 * b + 300, 64 * b] {
            let (d, ob) = object(size as usize);
            let root = blake3::hash(&d);
            let mut cases = vec![(0, size)];
            if size > 10 {
                cases.extend([(1, size - 1), (size / 2, size / 3), (size - 1, 1), (7, 3)]);
            }
            if size > 3 * b {
                cases.extend([(b, b), (b - 1, 2), (2 * b + 1000, b + 5000)]);
            }
            for (offset, len) in cases {
                let enc = encode(&d, &ob, offset, len);
                for piece in [1, 63, 4096, usize::MAX] {
                    let (got, res) = decode(root, size, offset, len, &enc, piece);
                    res.unwrap_or_else(|e| panic!("size {size}, {offset}+{len}: {e}"));
                    assert!(
                        got == d[offset as usize..(offset + len) as usize],
                        "size {size}, {offset}+{len}, pieces of {piece}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_caught_in_its_chunk_group_and_nothing_after_it_is_handed_out() {
        let b = BLOCK_BYTES;
        let size = 40 * b + 123;
        let (d, ob) = object(size);
        let root = blake3::hash(&d);
        let enc = encode(&d, &ob, 0, size as u64);
        // Flip one data byte in block 17 of the encoding: find it by content.
        let target = 17 * b + 4321;
        let mut bad_data = d.clone();
        bad_data[target] ^= 1;
        let bad_enc = encode(&bad_data, &ob, 0, size as u64);
        assert_ne!(enc, bad_enc);
        let (got, res) = decode(root, size as u64, 0, size as u64, &bad_enc, 4096);
        let err = res.unwrap_err();
        assert_eq!(err.offset, 17 * b as u64, "caught in its chunk group");
        assert_eq!(got.len(), 17 * b, "everything before it, nothing after");
        assert!(got == d[..17 * b]);
        // A flipped hash byte is caught too, before the data under it.
        for at in [5usize, 64 + 40, enc.len() - 1] {
            let mut e = enc.clone();
            e[at] ^= 0x80;
            let (got, res) = decode(root, size as u64, 0, size as u64, &e, 4096);
            assert!(res.is_err(), "flip at {at}");
            assert!(got == d[..got.len()]);
        }
        // The wrong root refuses the first item.
        let (got, res) = decode(
            blake3::hash(b"other"),
            size as u64,
            0,
            size as u64,
            &enc,
            4096,
        );
        assert!(res.is_err() && got.is_empty());
    }

    #[test]
    fn a_range_of_a_corrupt_object_is_checked_too() {
        let b = BLOCK_BYTES;
        let size = 9 * b;
        let (d, ob) = object(size);
        let root = blake3::hash(&d);
        let mut bad = d.clone();
        bad[5 * b + 10] ^= 4;
        let (offset, len) = (4 * b as u64 + 100, 2 * b as u64);
        let enc = encode(&bad, &ob, offset, len);
        let (got, res) = decode(root, size as u64, offset, len, &enc, 1000);
        assert_eq!(res.unwrap_err().offset, 5 * b as u64);
        assert_eq!(got.len(), b - 100);
    }

    #[test]
    fn an_empty_object_must_hash_to_nothing() {
        let mut buf = BytesMut::new();
        let mut ok = RangeDecoder::new(blake3::hash(b""), 0, 0, 0);
        assert_eq!(ok.next(&mut buf), Ok(Step::Done));
        let mut bad = RangeDecoder::new(blake3::hash(b"x"), 0, 0, 0);
        assert_eq!(bad.next(&mut buf), Err(Mismatch { offset: 0 }));
    }
}
