//! Compiles etcd's v3.4 protos and Cairn's peer proto with protox (a pure-Rust
//! protobuf compiler), so building needs no system `protoc`, and generates
//! protobuf-JSON serde impls (pbjson) for etcd's messages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/etcd/kv.proto",
        "proto/etcd/auth.proto",
        "proto/etcd/rpc.proto",
        "proto/cairn/peer.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // etcd's HTTP/JSON gateway speaks protobuf-JSON: proto field names out,
    // both proto and lowerCamelCase names in, int64 as strings, bytes base64.
    pbjson_build::Builder::new()
        .register_descriptors(&prost::Message::encode_to_vec(&fds))?
        .preserve_proto_field_names()
        .build(&[".etcdserverpb", ".mvccpb", ".authpb"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
