//! `unmask`: run LLaDA2 block-diffusion models from the command line.

mod backends;
mod bench;
mod commands;
mod hub;
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
    /// Download a model from the Hugging Face hub into its cache, without running it.
    Pull(commands::pull::Args),
    /// List the LLaDA2 models in the Hugging Face cache (revision, size, path).
    List(commands::list::Args),
}

fn main() {
    quiet_mesa();
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
        Command::Pull(a) => commands::pull::run(a),
        Command::List(a) => commands::list::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set in the environment" on
/// every start where it is missing (servers, containers, CI). A private runtime directory for
/// this process keeps that off the user's terminal. Runs first in `main`, before any thread.
#[cfg(target_os = "linux")]
fn quiet_mesa() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir()) {
        return;
    }
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("unmask-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    // Only a directory of our own that nobody else may enter (not one planted by another user).
    let ours = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0);
    if ours {
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

#[cfg(not(target_os = "linux"))]
fn quiet_mesa() {}
