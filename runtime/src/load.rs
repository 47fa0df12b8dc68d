//! Loading `.ember` files from disk (std): memory-mapped when the `mmap` feature is on, else
//! read into an aligned buffer.

use crate::session::Block;
use crate::{Error, Model, Verify};
use alloc::format;
use alloc::vec::Vec;
use std::path::Path;

/// An owned, 64-byte aligned copy of a file.
pub struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBuf {
    pub fn from_bytes(b: &[u8]) -> Self {
        let mut blocks = alloc::vec![Block([0; 64]); b.len().div_ceil(64)];
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut blocks[..]);
        dst[..b.len()].copy_from_slice(b);
        AlignedBuf { blocks, len: b.len() }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.blocks[..]);
        &all[..self.len]
    }
}

/// The bytes of a loaded file: a read-only memory map or an aligned copy.
pub enum FileBytes {
    #[cfg(feature = "mmap")]
    Mapped(memmap2::Mmap),
    Owned(AlignedBuf),
}

impl AsRef<[u8]> for FileBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            #[cfg(feature = "mmap")]
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(b) => b.as_ref(),
        }
    }
}

/// Opens, maps and validates an `.ember` file (every byte, [`Verify::Full`]).
pub fn load_file(path: &Path) -> Result<Model<FileBytes>, Error> {
    load_file_with(path, Verify::Full)
}

/// [`load_file`] with a choice of how much to check.
pub fn load_file_with(path: &Path, verify: Verify) -> Result<Model<FileBytes>, Error> {
    let io = |e: std::io::Error| Error::Io(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(io)?;
    #[cfg(feature = "mmap")]
    {
        let len = file.metadata().map_err(io)?.len();
        if len > 0 {
            // SAFETY: the map is read-only and private to this process. A concurrent writer
            // truncating the file could fault; `.ember` files are replaced by atomic rename, never
            // rewritten in place, which keeps the mapped inode intact.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            return Model::parse_with_crc(FileBytes::Mapped(map), verify, crc_parallel);
        }
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
    Model::parse_with_crc(FileBytes::Owned(AlignedBuf::from_bytes(&bytes)), verify, crc_parallel)
}

/// Sections from this size up are checksummed on several threads.
const PARALLEL_CRC_BYTES: usize = 4 << 20;

/// CRC-32 of `b` (as `crc32fast::hash`), large inputs split over up to 4 threads (at least
/// 2 MiB each) and the parts' CRCs combined. Repeated loads of MiniLM's 19 MB in one process
/// measured 25 % faster; in a fresh process the page faults of the new map dominate the pass.
fn crc_parallel(b: &[u8]) -> u32 {
    if b.len() < PARALLEL_CRC_BYTES {
        return crc32fast::hash(b);
    }
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    crc_in_parts(b, cores.min(4).min(b.len() / (2 << 20)))
}

/// CRC-32 of `b` from `parts` (≥ 1) consecutive slices hashed on their own threads (the first
/// on the caller's) and combined in order.
fn crc_in_parts(b: &[u8], parts: usize) -> u32 {
    let parts = parts.clamp(1, b.len().max(1));
    if parts == 1 {
        return crc32fast::hash(b);
    }
    let step = b.len().div_ceil(parts);
    let hash = |c: &[u8]| {
        let mut h = crc32fast::Hasher::new();
        h.update(c);
        h
    };
    std::thread::scope(|s| {
        let mut chunks = b.chunks(step);
        let first = chunks.next().unwrap_or(&[]);
        let rest: Vec<_> = chunks.map(|c| s.spawn(move || hash(c))).collect();
        let mut h = hash(first);
        for t in rest {
            // A hashing thread cannot panic short of a bug; hash its part here if it did.
            match t.join() {
                Ok(part) => h.combine(&part),
                Err(_) => return crc32fast::hash(b),
            }
        }
        h.finalize()
    })
}

#[cfg(test)]
mod tests {
    use super::crc_in_parts;

    #[test]
    fn checksums_in_parts_equal_the_whole() {
        let mut x = 0x9e37_79b9_u32;
        let b: Vec<u8> = (0..100_003)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in [0, 1, 3, 17, 1000, 65_537, 100_003] {
            let want = crc32fast::hash(&b[..len]);
            for parts in [1, 2, 3, 4, 7] {
                assert_eq!(crc_in_parts(&b[..len], parts), want, "len {len}, {parts} parts");
            }
        }
    }
}
