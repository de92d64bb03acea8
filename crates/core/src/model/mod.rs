//! Graph builders, one per architecture.

pub mod llada2;
