pub mod bench;
pub mod compare;
pub mod demo;
pub mod inspect;
pub mod quantize;
pub mod run;

use anyhow::{Context, Result};
use std::path::Path;

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Loads and validates an `.ember` file, naming it in the error.
pub fn load(path: &Path) -> Result<ember_runtime::Model<ember_runtime::FileBytes>> {
    if !path.exists() {
        anyhow::bail!("cannot read {}: no such file", path.display());
    }
    ember_runtime::load_file(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads an `.npz`, naming it in errors.
pub fn read_npz(path: &Path) -> Result<ember_quantize::npz::Arrays> {
    if !path.exists() {
        anyhow::bail!("cannot read {}: no such file", path.display());
    }
    Ok(ember_quantize::npz::read_npz(path)?)
}
