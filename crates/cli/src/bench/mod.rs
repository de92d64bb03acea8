//! `unmask bench`: honest performance figures. Milliseconds per forward against the memory
//! floor of the bytes that forward must touch, tokens per second at an assumed and a measured
//! tokens-per-forward, the autoregressive baseline on the same machine, and the KV cache's
//! effect. Timings live here and in the criterion benches, never in test assertions.

pub mod bandwidth;
pub mod batch;
pub mod host;
pub mod profile;
pub mod realrun;
pub mod report;
pub mod source;
pub mod stats;
pub mod traffic;
pub mod workload;
