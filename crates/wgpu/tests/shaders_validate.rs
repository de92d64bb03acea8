//! Every shader module parses, validates, and translates to SPIR-V, MSL and HLSL with naga: the
//! WGSL is portable before any GPU runs it (no adapter needed).

use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use unmask_wgpu::shaders::all_modules;

fn validate(label: &str, source: &str, subgroups: bool) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(source)));
    // No optional capabilities but subgroups, and those only for the modules built for devices
    // that have them: the kernels must run on adapters without shader-f16 or subgroups.
    let caps = if subgroups {
        Capabilities::SUBGROUP
    } else {
        Capabilities::empty()
    };
    let mut validator = Validator::new(ValidationFlags::all(), caps);
    if subgroups {
        validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
        validator.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(source)));
    (module, info)
}

#[test]
fn every_module_validates_and_translates() {
    let modules = all_modules();
    assert!(modules.len() >= 8);
    for (label, source, subgroups) in &modules {
        let (module, info) = validate(label, source, *subgroups);
        let entry_points: Vec<&str> = module
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert!(!entry_points.is_empty(), "{label}: no entry points");

        let words = spv::write_vec(&module, &info, &spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{label}: SPIR-V: {e}"));
        assert_eq!(words[0], 0x0723_0203, "{label}: SPIR-V magic");

        let (msl_src, _) = msl::write_string(
            &module,
            &info,
            &msl::Options {
                lang_version: (2, 1),
                ..Default::default()
            },
            &msl::PipelineOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{label}: MSL: {e}"));
        for ep in &entry_points {
            assert!(msl_src.contains(ep), "{label}: MSL lacks {ep}");
        }

        let mut hlsl_src = String::new();
        let options = hlsl::Options::default();
        let pipeline = hlsl::PipelineOptions::default();
        let mut writer = hlsl::Writer::new(&mut hlsl_src, &options, &pipeline);
        writer
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{label}: HLSL: {e}"));
        for ep in &entry_points {
            assert!(hlsl_src.contains(ep), "{label}: HLSL lacks {ep}");
        }
        println!(
            "{label}: {} entry points ok ({})",
            entry_points.len(),
            entry_points.join(", ")
        );
    }
}
