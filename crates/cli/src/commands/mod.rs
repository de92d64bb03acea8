pub mod bench;
pub mod chat;
pub mod devices;
pub mod generate;
pub mod inspect;
pub mod quantize;
pub mod serve;

use anyhow::{Context, Result};
use std::path::Path;
use unmask_core::Model;

/// Opens a model directory with the path in any error.
pub fn open_model(dir: &Path) -> Result<Model> {
    // The library's errors name the file involved: no second copy of the path.
    Model::open(dir).context("loading the model")
}
