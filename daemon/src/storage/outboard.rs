//! BLAKE3 outboards: the hash tree of an object, kept beside its bytes, so
//! any range of it can be sent with the proof that it belongs to the
//! object's hash (bao verified streaming, in `bao-tree`'s format).
//!
//! - **Geometry**: 16 KiB chunk groups ([`BLOCK`]); the outboard holds one
//!   64-byte hash pair per parent node in post-order, about 0.4% of the
//!   object. An object of one block or less has an empty outboard.
//! - **Building**: [`OutboardBuilder`] takes the bytes in the order they
//!   are written, of a size not known in advance, and computes the hash
//!   and the outboard in that one pass (it replaces the plain hasher, so a
//!   put costs no extra pass over the data). The root hash is the object's
//!   ordinary BLAKE3 hash.
//! - **Serving**: [`Outboard`] reads hash pairs from memory or from the
//!   `.obao` file beside a disk object, and [`encode_range`] writes the
//!   verifiable encoding of a byte range (the leaves covering it and every
//!   parent on their way to the root).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};

use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges, TreeNode};
use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use bytes::Bytes;

/// Chunk-group size of every outboard: 16 KiB (2⁴ BLAKE3 chunks), as iroh uses.
pub const BLOCK: BlockSize = BlockSize::from_chunk_log(4);
/// [`BLOCK`] in bytes.
pub const BLOCK_BYTES: usize = 16 * 1024;

/// The tree of an object of `size` bytes.
pub fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BLOCK)
}

/// The chunk ranges of the whole chunk groups that cover bytes
/// `offset..offset + len` of an object of `size` bytes. Whole groups, and
/// a range that reaches the object's end left open, are the forms for
/// which `bao-tree`'s encoder and its response iterator agree.
pub fn chunk_ranges(offset: u64, len: u64, size: u64) -> ChunkRanges {
    if len == 0 {
        return ChunkRanges::empty();
    }
    let block = BLOCK_BYTES as u64;
    let start = ChunkNum::full_chunks(offset / block * block);
    let end = (offset + len).div_ceil(block) * block;
    if end >= size {
        ChunkRanges::from(start..)
    } else {
        ChunkRanges::from(start..ChunkNum::full_chunks(end))
    }
}

/// Computes an object's BLAKE3 hash and post-order outboard from its bytes,
/// in order, in one pass.
#[derive(Default)]
pub struct OutboardBuilder {
    /// The block being filled. A full block is hashed only once more bytes
    /// arrive: the last block of an object of one block is the root.
    block: Vec<u8>,
    /// Blocks hashed so far.
    blocks: u64,
    /// Complete subtrees not yet merged: (log2 of their blocks, chaining value).
    stack: Vec<(u32, ChainingValue)>,
    /// Hash pairs of merged subtrees, in post-order.
    out: Vec<u8>,
    size: u64,
}

impl std::fmt::Debug for OutboardBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboardBuilder")
            .field("size", &self.size)
            .field("outboard", &self.out.len())
            .finish()
    }
}

impl OutboardBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Add the next bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.size += data.len() as u64;
        while !data.is_empty() {
            if self.block.len() == BLOCK_BYTES {
                // More bytes follow, so this block is not the only one.
                let block = std::mem::take(&mut self.block);
                self.push_block(&block);
                self.block = block;
                self.block.clear();
            }
            if self.block.is_empty() && data.len() > BLOCK_BYTES {
                // A whole block with more after it: hash it in place.
                self.push_block(&data[..BLOCK_BYTES]);
                data = &data[BLOCK_BYTES..];
                continue;
            }
            if self.block.capacity() == 0 {
                self.block.reserve_exact(BLOCK_BYTES);
            }
            let take = (BLOCK_BYTES - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
    }

    fn push_block(&mut self, block: &[u8]) {
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(self.blocks * BLOCK_BYTES as u64);
        hasher.update(block);
        let cv = hasher.finalize_non_root();
        // Merge the subtrees that are complete now that another follows
        // (as BLAKE3 itself does: never before, since the last merge is the
        // root and is hashed differently).
        while self.stack.len() > self.blocks.count_ones() as usize {
            self.merge(false);
        }
        self.stack.push((0, cv));
        self.blocks += 1;
    }

    /// Merge the top two subtrees; `root` for the last merge.
    fn merge(&mut self, root: bool) -> Option<blake3::Hash> {
        let (_, right) = self.stack.pop().expect("two subtrees");
        let (level, left) = self.stack.pop().expect("two subtrees");
        self.out.extend_from_slice(&left);
        self.out.extend_from_slice(&right);
        if root {
            Some(merge_subtrees_root(&left, &right, Mode::Hash))
        } else {
            let cv = merge_subtrees_non_root(&left, &right, Mode::Hash);
            self.stack.push((level + 1, cv));
            None
        }
    }

    /// The object's BLAKE3 hash and its outboard.
    pub fn finish(mut self) -> (blake3::Hash, Vec<u8>) {
        if self.blocks == 0 {
            return (blake3::hash(&self.block), Vec::new());
        }
        let last = std::mem::take(&mut self.block);
        self.push_block(&last);
        while self.stack.len() > 2 {
            self.merge(false);
        }
        let root = self.merge(true).expect("the root");
        debug_assert_eq!(self.out.len() as u64, tree(self.size).outboard_size());
        (root, self.out)
    }
}

/// Where a stored object's hash pairs are.
#[derive(Debug)]
enum Pairs {
    Memory(Bytes),
    File(File),
    /// Filled in as they arrive (a partial copy's).
    Shared(Arc<RwLock<Vec<u8>>>),
}

/// A stored object's outboard, for serving verified ranges.
#[derive(Debug)]
pub struct Outboard {
    root: blake3::Hash,
    tree: BaoTree,
    pairs: Pairs,
}

impl Outboard {
    /// The outboard of an object of `size` bytes hashing to `root`, held in memory.
    pub fn memory(root: blake3::Hash, size: u64, pairs: Bytes) -> Self {
        Self {
            root,
            tree: tree(size),
            pairs: Pairs::Memory(pairs),
        }
    }

    /// The outboard of a copy still arriving: `pairs` (as long as the tree
    /// needs) is filled in as they arrive.
    pub fn shared(root: blake3::Hash, size: u64, pairs: Arc<RwLock<Vec<u8>>>) -> Self {
        Self {
            root,
            tree: tree(size),
            pairs: Pairs::Shared(pairs),
        }
    }

    /// The outboard kept in `file`; it must be as long as the tree needs.
    pub fn file(root: blake3::Hash, size: u64, file: File) -> io::Result<Self> {
        let tree = tree(size);
        let len = file.metadata()?.len();
        if len != tree.outboard_size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the outboard file has {len} bytes, an object of {size} bytes needs {}",
                    tree.outboard_size()
                ),
            ));
        }
        Ok(Self {
            root,
            tree,
            pairs: Pairs::File(file),
        })
    }
}

impl bao_tree::io::sync::Outboard for Outboard {
    fn root(&self) -> blake3::Hash {
        self.root
    }

    fn tree(&self) -> BaoTree {
        self.tree
    }

    fn load(&self, node: TreeNode) -> io::Result<Option<(blake3::Hash, blake3::Hash)>> {
        let Some(at) = self.tree.post_order_offset(node) else {
            return Ok(None);
        };
        let at = at.value() * 64;
        let mut pair = [0u8; 64];
        match &self.pairs {
            Pairs::Memory(b) => {
                let src = b
                    .get(at as usize..at as usize + 64)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                pair.copy_from_slice(src);
            }
            Pairs::File(f) => f.read_exact_at(&mut pair, at)?,
            Pairs::Shared(p) => {
                let p = p.read().expect("pairs");
                let src = p
                    .get(at as usize..at as usize + 64)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                pair.copy_from_slice(src);
            }
        }
        let l: [u8; 32] = pair[..32].try_into().expect("32 bytes");
        let r: [u8; 32] = pair[32..].try_into().expect("32 bytes");
        Ok(Some((l.into(), r.into())))
    }
}

/// The object's bytes, for [`encode_range`].
pub enum Data<'a> {
    /// In memory.
    Memory(&'a [u8]),
    /// In a file.
    File(&'a File),
}

/// Write the verifiable encoding of bytes `offset..offset + len` of an
/// object: the parents and leaves, in pre-order, that a receiver holding
/// only the root hash needs to check every leaf as it arrives. The bytes
/// are not checked here (the receiver does). Blocking.
pub fn encode_range(
    data: Data<'_>,
    outboard: &Outboard,
    offset: u64,
    len: u64,
    out: impl Write,
) -> io::Result<()> {
    let ranges = chunk_ranges(offset, len, outboard.tree.size());
    if ranges.is_empty() {
        return Ok(());
    }
    let result = match data {
        Data::Memory(b) => bao_tree::io::sync::encode_ranges(b, outboard, &ranges, out),
        Data::File(f) => bao_tree::io::sync::encode_ranges(f, outboard, &ranges, out),
    };
    result.map_err(|e| match e {
        bao_tree::io::EncodeError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    })
}

/// The outboard `bao-tree` computes for `data` (reference for tests).
#[cfg(test)]
pub(crate) fn reference(data: &[u8]) -> (blake3::Hash, Vec<u8>) {
    let ob = bao_tree::io::outboard::PostOrderMemOutboard::create(data, BLOCK);
    (ob.root, ob.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn builder_matches_bao_tree_for_any_size_and_write_pattern() {
        let b = BLOCK_BYTES;
        for size in [
            0,
            1,
            1023,
            1024,
            b - 1,
            b,
            b + 1,
            2 * b,
            3 * b - 5,
            3 * b,
            4 * b,
            5 * b + 77,
            8 * b,
            9 * b,
            100 * b + 3,
        ] {
            let d = data(size);
            let want = reference(&d);
            assert_eq!(want.0, blake3::hash(&d), "root is the plain hash");
            for piece in [1usize, 1000, b - 1, b, b + 1, 3 * b + 7, usize::MAX] {
                let mut builder = OutboardBuilder::new();
                for part in d.chunks(piece.min(d.len().max(1))) {
                    builder.update(part);
                }
                assert_eq!(builder.size(), size as u64);
                let got = builder.finish();
                assert_eq!(got.0, want.0, "size {size}, pieces of {piece}");
                assert!(got.1 == want.1, "outboard, size {size}, pieces of {piece}");
            }
        }
    }

    #[test]
    fn an_encoded_range_holds_its_leaves() {
        let d = data(10 * BLOCK_BYTES + 100);
        let (root, pairs) = reference(&d);
        let ob = Outboard::memory(root, d.len() as u64, pairs.into());
        let mut whole = Vec::new();
        encode_range(Data::Memory(&d), &ob, 0, d.len() as u64, &mut whole).unwrap();
        assert_eq!(
            whole.len() as u64,
            d.len() as u64 + tree(d.len() as u64).outboard_size()
        );
        let mut part = Vec::new();
        encode_range(
            Data::Memory(&d),
            &ob,
            3 * BLOCK_BYTES as u64 + 5,
            10,
            &mut part,
        )
        .unwrap();
        assert!(
            part.len() >= BLOCK_BYTES && part.len() < 2 * BLOCK_BYTES,
            "{}",
            part.len()
        );
        let mut none = Vec::new();
        encode_range(Data::Memory(&d), &ob, 7, 0, &mut none).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn an_outboard_file_of_the_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.obao");
        std::fs::write(&path, [0u8; 64]).unwrap();
        let f = File::open(&path).unwrap();
        let err = Outboard::file(blake3::hash(b""), 3 * BLOCK_BYTES as u64, f).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
