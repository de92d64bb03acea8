pub mod bench;
pub mod chat;
pub mod devices;
pub mod generate;
pub mod inspect;
pub mod list;
pub mod pull;
pub mod quantize;
pub mod serve;

use anyhow::{Context, Result};
use std::path::Path;
use unmask_core::Model;

/// Opens a model directory, or the cached snapshot of a Hugging Face id (fetched if missing).
pub fn open_model(arg: &Path) -> Result<Model> {
    let dir = crate::hub::model_dir(arg)?;
    // The library's errors name the file involved: no second copy of the path.
    Model::open(&dir).context("loading the model")
}
