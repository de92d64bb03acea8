//! unmask-web: LLaDA2 block-diffusion decoding in the browser.
//!
//! The wasm module runs inside a Web Worker (`crates/web/js/worker.js`), which fetches the model
//! files and talks to the page by messages (`crates/web/js/unmask.js` wraps that in an `Engine`
//! class). The Rust side is split so that everything except the JS glue builds and is tested
//! natively:
//! - [`load`]: model files (bytes fetched by JS) into a checked [`unmask_core::Model`].
//! - [`request`]: a generation request as JSON (text, chat messages or token ids, options).
//! - [`generator`]: one generation driven step by step, producing the per-step messages the
//!   page draws (the block's slots, committed tokens, text deltas).
//! - `bindings` (wasm32 only): the wasm-bindgen classes `Loader` and `Engine`.

pub mod generator;
pub mod load;
pub mod request;

#[cfg(target_arch = "wasm32")]
mod bindings;
