//! Compiles the .proto files with protox (pure Rust, no protoc needed) and generates server and
//! client code with tonic-prost-build.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["catalog/v1/catalog.proto"];
    // Also emits `cargo:rerun-if-changed` for every file it reads.
    let fds = protox::compile(protos, ["."])?;
    // tonic-prost-build's compile_fds does not write the descriptor set reflection needs.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("catalog_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
