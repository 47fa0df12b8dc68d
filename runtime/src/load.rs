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
            return Model::parse_with(FileBytes::Mapped(map), verify);
        }
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
    Model::parse_with(FileBytes::Owned(AlignedBuf::from_bytes(&bytes)), verify)
}
