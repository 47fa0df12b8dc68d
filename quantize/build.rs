//! Compiles the vendored onnx.proto with protox (pure Rust; no protoc on the machine).
fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["onnx.proto"], ["proto"]).expect("proto/onnx.proto compiles");
    prost_build::Config::new().compile_fds(fds).expect("prost code generation");
}
