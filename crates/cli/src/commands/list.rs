//! `unmask list`: the LLaDA2 models in the Hugging Face cache, with revision and size.

use crate::hub;
use anyhow::Result;
use indicatif::HumanBytes;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let env = hub::HubEnv::from_env();
    let models = hub::list(&env.cache)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        println!(
            "no LLaDA2 models in {} (fetch one with `unmask pull ORG/NAME`)",
            env.cache.display()
        );
        return Ok(());
    }
    let width = models
        .iter()
        .map(|m| m.repo.len())
        .max()
        .unwrap_or(0)
        .max(5);
    println!(
        "{:width$}  {:<20}  {:>10}  PATH",
        "MODEL", "REVISION", "SIZE"
    );
    for m in &models {
        let rev = match m.refs.as_slice() {
            [] => m.commit[..12].to_string(),
            refs => format!("{} ({})", refs.join(","), &m.commit[..7]),
        };
        println!(
            "{:width$}  {:<20}  {:>10}  {}",
            m.repo,
            rev,
            HumanBytes(m.bytes).to_string(),
            m.path.display()
        );
    }
    Ok(())
}
