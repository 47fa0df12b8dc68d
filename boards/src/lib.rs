//! Board profiles as data: `profiles/boards.toml` is embedded in the crate and parsed on demand.
//! A profile tells `quantize` how to pack weights and which batch sizes to compile by default,
//! and tells `ember flash` how to deploy.

use serde::Deserialize;
use std::collections::BTreeMap;

const BOARDS_TOML: &str = include_str!("../profiles/boards.toml");

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Board {
    #[serde(skip)]
    pub name: String,
    pub description: String,
    pub triple: String,
    pub cpu_features: Vec<String>,
    pub cores: u32,
    pub ram_mb: u32,
    pub cuda_sm: Option<u32>,
    pub cuda_version: Option<String>,
    #[serde(default)]
    pub integrated_gpu: bool,
    pub default_batches: Vec<u32>,
    pub flash: String,
}

/// Every known board, by name.
pub fn all() -> Vec<Board> {
    let table: BTreeMap<String, Board> =
        toml::from_str(BOARDS_TOML).expect("embedded boards.toml is checked by a unit test");
    table.into_iter().map(|(name, b)| Board { name, ..b }).collect()
}

/// The board called `name`, or an error listing the known ones.
pub fn find(name: &str) -> Result<Board, String> {
    let boards = all();
    let names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
    let known = names.join(", ");
    boards
        .iter()
        .find(|b| b.name == name)
        .cloned()
        .ok_or_else(|| format!("unknown board '{name}' (known: {known})"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn profiles_parse_and_are_consistent() {
        let all = super::all();
        assert!(all.len() >= 6);
        for b in &all {
            assert!(!b.default_batches.is_empty(), "{}", b.name);
            if b.integrated_gpu {
                assert!(b.cuda_sm.is_some(), "{} has an iGPU but no SM", b.name);
            }
        }
        assert_eq!(super::find("jetson-xavier-nx").unwrap().cuda_sm, Some(72));
        assert_eq!(super::find("jetson-orin-nano").unwrap().cuda_sm, Some(87));
        assert!(super::find("nope").unwrap_err().contains("jetson-orin-nano"));
    }
}
