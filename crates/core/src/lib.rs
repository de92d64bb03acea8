//! unmask-core: everything about LLaDA2 block-diffusion inference that is not device code.
//!
//! - [`config`], [`weights`], [`chat`], [`loader`]: a Hugging Face model directory, checked.
//! - [`graph`], [`model::llada2`]: the forward pass as data.
//! - [`backend`]: the trait devices implement; [`reference`]: the f32 oracle.
//! - [`decode`]: the block-diffusion decoder with its KV cache and sampler.

pub mod backend;
pub mod chat;
pub mod chunks;
pub mod config;
pub mod decode;
pub mod error;
pub mod files;
pub mod graph;
pub mod loader;
pub mod model;
pub mod passes;
pub mod profile;
pub mod quant;
pub mod reference;
pub mod sandbox;
pub mod step_params;
pub mod synthetic;
pub mod weights;

pub use backend::{Backend, Capture, SampleParams, Sampled, Step, StepOutput};
pub use chat::{ChatTokenizer, Message, SpecialIds};
pub use config::Config;
pub use decode::{generate, DecodeParams, Generation, StepEvent};
pub use error::{Error, Result};
pub use loader::Model;
pub use reference::ReferenceBackend;
