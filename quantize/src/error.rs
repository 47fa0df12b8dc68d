use thiserror::Error;

/// Errors of the quantizer. Each names the input, node, op or file concerned.
#[derive(Debug, Error)]
pub enum Error {
    #[error("malformed ONNX model: {0}")]
    Onnx(String),
    #[error("unsupported op '{op}' in node '{node}' (supported: {supported})")]
    UnsupportedOp { op: String, node: String, supported: String },
    #[error("node '{node}' ({op}): {msg}")]
    Node { node: String, op: String, msg: String },
    #[error("shape error: {0}")]
    Shape(String),
    #[error("calibration data: {0}")]
    Calib(String),
    #[error("input data: {0}")]
    Input(String),
    #[error("{0}")]
    Npz(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Runtime(#[from] ember_runtime::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn node(node: &str, op: &str, msg: impl Into<String>) -> Self {
        Error::Node { node: node.to_string(), op: op.to_string(), msg: msg.into() }
    }
}
