//! `unmask devices`: CUDA's driver and NVRTC versions and devices (whether the kernels compile
//! for each, where they are cached), then the GPU adapters wgpu sees, best first, with what
//! matters to this runtime (backend, type, the limits weights are split for, features), and
//! which one `--backend wgpu` opens.

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Mark the adapter this name selects (as `--adapter` / UNMASK_ADAPTER would).
    #[arg(long, env = "UNMASK_ADAPTER")]
    pub adapter: Option<String>,
}

fn human(bytes: u64) -> Option<String> {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => Some(format!("{} GiB", b >> 30)),
        b if b >= 1 << 20 => Some(format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)),
        _ => None,
    }
}

/// The CUDA part of the listing (versions, devices, the kernel cache), as lines.
fn cuda_lines() -> Vec<String> {
    match unmask_cuda::survey() {
        Err(e) => vec![format!(
            "cuda: {}",
            e.to_string().trim_start_matches("backend cuda: ")
        )],
        Ok(s) => {
            let mut v = vec![format!("cuda: {}", s.toolchain.describe())];
            for (d, target) in &s.devices {
                let compiles = match target {
                    Ok(sm) => format!("kernels compile for sm_{sm}"),
                    Err(why) => why.clone(),
                };
                v.push(format!(
                    "  {}: {} (compute capability {}.{}, {:.1} GiB): {compiles}",
                    d.ordinal,
                    d.name,
                    d.compute_capability.0,
                    d.compute_capability.1,
                    d.memory_bytes as f64 / (1u64 << 30) as f64
                ));
            }
            v.push(match &s.cache {
                Some(dir) => format!("  compiled kernels cached in {}", dir.display()),
                None => {
                    "  compiled kernels are not cached (UNMASK_CUDA_CACHE=off or no HOME)".into()
                }
            });
            v
        }
    }
}

fn cuda_json() -> serde_json::Value {
    match unmask_cuda::survey() {
        Err(e) => serde_json::json!({ "available": false, "why": e.to_string() }),
        Ok(s) => serde_json::json!({
            "available": true,
            "driver_cuda_version": format!("{}.{}", s.toolchain.driver.0, s.toolchain.driver.1),
            "nvrtc_version": format!("{}.{}", s.toolchain.nvrtc.0, s.toolchain.nvrtc.1),
            "nvrtc_architectures": s.toolchain.archs,
            "kernel_cache": s.cache,
            "devices": s.devices.iter().map(|(d, t)| serde_json::json!({
                "ordinal": d.ordinal,
                "name": d.name,
                "compute_capability": format!("{}.{}", d.compute_capability.0, d.compute_capability.1),
                "memory_bytes": d.memory_bytes,
                "target": t.as_ref().map(|sm| format!("sm_{sm}")).ok(),
                "why_not": t.as_ref().err(),
            })).collect::<Vec<_>>(),
        }),
    }
}

pub fn run(args: Args) -> Result<()> {
    let adapters = unmask_wgpu::list_adapters();
    let probe = unmask_wgpu::probe(args.adapter.as_deref());
    let chosen = probe.as_ref().ok();
    if args.json {
        let list: Vec<serde_json::Value> = adapters
            .iter()
            .map(|a| {
                let mut v = serde_json::to_value(a).unwrap_or_default();
                v["chosen"] = serde_json::json!(chosen
                    .as_ref()
                    .is_some_and(|c| c.name == a.name && c.backend == a.backend));
                v
            })
            .collect();
        let all = serde_json::json!({ "wgpu": list, "cuda": cuda_json() });
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    for line in cuda_lines() {
        println!("{line}");
    }
    if adapters.is_empty() {
        println!(
            "no wgpu adapters (no Vulkan, Metal or DX12 device; on Linux without a GPU, \
             `apt-get install mesa-vulkan-drivers` provides lavapipe)"
        );
        return Ok(());
    }
    for (i, a) in adapters.iter().enumerate() {
        let mark = if chosen
            .as_ref()
            .is_some_and(|c| c.name == a.name && c.backend == a.backend)
        {
            "  <- --backend wgpu"
        } else {
            ""
        };
        println!("{i}: {} ({}, {}){mark}", a.name, a.backend, a.device_type);
        if !a.driver.is_empty() {
            println!("   driver: {}", a.driver);
        }
        for (name, v) in &a.limits {
            let shown = match human(*v) {
                Some(h) if name.ends_with("_size") => format!("{v} ({h})"),
                _ => v.to_string(),
            };
            println!("   {name}: {shown}");
        }
        let features = if a.features.is_empty() {
            "none".to_string()
        } else {
            a.features.join(", ")
        };
        println!("   features: {features}");
    }
    if let Err(e) = probe {
        let e = e.to_string();
        println!("--backend wgpu: {}", e.trim_start_matches("backend wgpu: "));
    }
    Ok(())
}
