//! `unmask`: run LLaDA2 block-diffusion models from the command line.

mod backends;
mod bench;
mod commands;
mod progress;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "unmask",
    version,
    about = "Block-diffusion LLM inference (LLaDA2) on CPU and GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, a chat message, token ids, or a JSONL file of requests.
    Generate(commands::generate::Args),
    /// Describe a model directory: config, parameters, bytes by dtype, memory needed.
    Inspect(commands::inspect::Args),
    /// Serve the model over an OpenAI-compatible HTTP API (chat, completions, streaming).
    Serve(commands::serve::Args),
    /// Chat with the model in the terminal (history, streamed answers, /reset, /exit).
    Chat(commands::chat::Args),
    /// Time the decoding step against its memory floor and the autoregressive baseline.
    Bench(commands::bench::Args),
    /// Write a quantized copy of a model directory (q8_0 or q4 blocks).
    Quantize(commands::quantize::Args),
    /// List the GPU adapters wgpu sees: backend, type, limits, features.
    Devices(commands::devices::Args),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNMASK_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Devices(a) => commands::devices::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
