use alloc::string::String;
use core::fmt;

/// Everything that can go wrong reading or running a model. Load-time variants carry a message
/// naming the field; run-time variants carry only numbers, so the error path allocates nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The file ends before a structure it declares.
    Truncated { what: &'static str, need: u64, have: u64 },
    /// Not an `.ember` file.
    BadMagic,
    /// A format version this reader does not know.
    UnsupportedVersion(u32),
    /// A section's stored CRC-32 does not match its bytes.
    Checksum { section: &'static str, index: u32 },
    /// A structurally invalid file: the message names the field and the value.
    Corrupt(String),
    /// An input given to `run` has the wrong byte length.
    InputSize { input: usize, expected: usize, got: usize },
    /// Wrong number of inputs given to `run`.
    InputCount { expected: usize, got: usize },
    /// An index (e.g. an embedding id) outside its table, found while running op `op`.
    IndexOutOfRange { op: usize, index: i64, bound: usize },
    /// No plan with this batch size.
    NoSuchPlan { batch: u32 },
    /// A tensor or value whose address does not suit its dtype (a mis-aligned model buffer).
    Misaligned { what: &'static str },
    /// Memory for the arena could not be reserved.
    OutOfMemory { bytes: u64 },
    /// I/O error while loading (std only), with the path.
    Io(String),
    /// A GPU backend failed (driver call, kernel load), with its message.
    Device(String),
    /// An overlay file that is corrupt or does not fit the model (see [`crate::overlay`]).
    Overlay(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { what, need, have } => {
                write!(f, "truncated .ember file: {what} needs {need} bytes, file has {have}")
            }
            Error::BadMagic => write!(f, "not an .ember file (bad magic bytes)"),
            Error::UnsupportedVersion(v) => {
                write!(f, "unsupported .ember format version {v} (this reader knows version 1)")
            }
            Error::Checksum { section, index } => {
                write!(f, "corrupt .ember file: checksum mismatch in {section} section #{index}")
            }
            Error::Corrupt(m) => write!(f, "corrupt .ember file: {m}"),
            Error::InputSize { input, expected, got } => {
                write!(f, "input #{input}: expected {expected} bytes, got {got}")
            }
            Error::InputCount { expected, got } => {
                write!(f, "expected {expected} inputs, got {got}")
            }
            Error::IndexOutOfRange { op, index, bound } => {
                write!(f, "op #{op}: index {index} out of range for a dimension of size {bound}")
            }
            Error::NoSuchPlan { batch } => {
                write!(f, "the model has no plan for batch size {batch}")
            }
            Error::Misaligned { what } => write!(f, "{what} is not aligned for its dtype"),
            Error::OutOfMemory { bytes } => write!(f, "could not allocate {bytes} bytes"),
            Error::Io(m) => write!(f, "{m}"),
            Error::Device(m) => write!(f, "{m}"),
            Error::Overlay(m) => write!(f, "bad overlay: {m}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Shorthand for a load-time corruption error.
macro_rules! corrupt {
    ($($arg:tt)*) => { $crate::Error::Corrupt(alloc::format!($($arg)*)) };
}
pub(crate) use corrupt;
