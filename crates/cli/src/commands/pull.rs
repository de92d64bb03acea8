//! `unmask pull ID`: fetch a model's runtime files into the hub cache without running it.

use crate::hub;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face model id, `ORG/NAME` or `ORG/NAME@REVISION` (branch, tag or commit).
    pub id: String,
}

pub fn run(args: Args) -> Result<()> {
    let id = hub::parse_or_explain(&args.id)?;
    let env = hub::HubEnv::from_env();
    let dir = hub::snapshot(&env, &id)?;
    // The snapshot path on stdout alone: `--model "$(unmask pull ID)"` works too.
    eprintln!("hub: {id} is in the cache");
    println!("{}", dir.display());
    Ok(())
}
