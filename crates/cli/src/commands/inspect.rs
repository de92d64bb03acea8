//! `unmask inspect`: what a model directory holds and what running it costs.

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, required_unless_present = "shape", conflicts_with = "shape")]
    pub model: Option<PathBuf>,
    /// A published shape instead of a directory (mini, flash): parameters and memory per format.
    #[arg(long)]
    pub shape: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(name) = &args.shape {
        return super::quantize::inspect_shape(name, args.json);
    }
    let Some(dir) = &args.model else {
        anyhow::bail!("give --model DIR or --shape NAME");
    };
    let model = super::open_model(dir)?;
    let c = &model.config;
    let s = model.summary();
    let ids = model.special_ids();
    let by_format = unmask_core::quant::memory::memory_by_format(c);
    if args.json {
        let v = serde_json::json!({
            "config": c,
            "special_ids": ids,
            "tokenizer_vocab": model.tokenizer.vocab_size(),
            "summary": s,
            "memory_by_format": by_format,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model       {}", model.dir.display());
    println!(
        "type        {} ({} layers, hidden {})",
        c.model_type, c.num_hidden_layers, c.hidden_size
    );
    println!(
        "attention   {} query heads, {} kv heads, head_dim {}, rotary {} (theta {})",
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.rotary_dim(),
        c.rope_theta
    );
    println!(
        "ffn         dense {} (first {} layers); {} experts x {} wide, top-{}, {} groups keep {}, {} shared",
        c.intermediate_size,
        c.first_k_dense_replace,
        c.num_experts,
        c.moe_intermediate_size,
        c.num_experts_per_tok,
        c.n_group,
        c.topk_group,
        c.num_shared_experts
    );
    println!(
        "vocab       {} rows ({} tokenizer ids); eos {}, mask {}",
        c.vocab_size,
        model.tokenizer.vocab_size(),
        ids.eos,
        ids.mask
    );
    println!("context     {} positions", c.max_position_embeddings);
    println!(
        "parameters  {} total, {} active per token",
        human(s.parameters as f64, ""),
        human(s.active_parameters as f64, "")
    );
    for (dtype, bytes) in &s.bytes_by_dtype {
        println!("weights     {dtype}: {}", human(*bytes as f64, "B"));
    }
    println!(
        "kv cache    {} per position (f32)",
        human(s.kv_bytes_per_position as f64, "B")
    );
    println!(
        "memory      {} weights + {} KV at full context = {}",
        human(s.weight_bytes as f64, "B"),
        human((s.memory_full_context - s.weight_bytes) as f64, "B"),
        human(s.memory_full_context as f64, "B")
    );
    super::quantize::print_memory_by_format(&by_format);
    Ok(())
}

pub fn human(v: f64, unit: &str) -> String {
    let (scale, suffix) = if v >= 1e12 {
        (1e12, "T")
    } else if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    format!("{:.2} {suffix}{unit}", v / scale)
}
