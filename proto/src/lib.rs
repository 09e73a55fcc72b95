//! The gRPC contracts of TicketFlow and their generated code: one copy, shared by the servers
//! (catalog) and every client (ordering, gateway, tests), so the two sides cannot drift.
//!
//! The sources are `proto/<package>/<version>/*.proto`; `build.rs` compiles them without `protoc`.

/// `ticketflow.catalog.*`
pub mod catalog {
    /// `ticketflow.catalog.v1`: concerts and seat holds.
    pub mod v1 {
        tonic::include_proto!("ticketflow.catalog.v1");

        /// The encoded `FileDescriptorSet` of catalog.proto and its imports, for gRPC reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("catalog_v1_descriptor");
    }
}
