//! The WGSL sources, one file per op family, and how a module is put together: the step
//! parameters (group 1) first, then the weight format's `w_load4` for families that read
//! matrices, then the family itself. WGSL has no includes, so this concatenation is the linker.

use crate::format::WeightFormat;

pub const STEP: &str = include_str!("../shaders/step.wgsl");
pub const FORMAT_F32: &str = include_str!("../shaders/formats/f32.wgsl");
pub const FORMAT_BF16: &str = include_str!("../shaders/formats/bf16.wgsl");
pub const FORMAT_F16: &str = include_str!("../shaders/formats/f16.wgsl");
pub const FORMAT_Q8_0: &str = include_str!("../shaders/formats/q8_0.wgsl");
pub const FORMAT_Q4: &str = include_str!("../shaders/formats/q4.wgsl");

/// The kernel families are core's (`OpFamily`): one WGSL file each, named by its file stem.
pub use unmask_core::graph::OpFamily as Family;

pub fn source(family: Family) -> &'static str {
    match family {
        Family::Embed => include_str!("../shaders/embed.wgsl"),
        Family::Norm => include_str!("../shaders/rms_norm.wgsl"),
        Family::MatMul => include_str!("../shaders/matmul.wgsl"),
        Family::Rope => include_str!("../shaders/rope.wgsl"),
        Family::Attention => include_str!("../shaders/attention.wgsl"),
        Family::Elementwise => include_str!("../shaders/elementwise.wgsl"),
        Family::Moe => include_str!("../shaders/moe.wgsl"),
        Family::Sample => include_str!("../shaders/sample.wgsl"),
    }
}

/// Whether the family reads packed weight matrices (and so is built once per format).
pub fn reads_matrices(family: Family) -> bool {
    matches!(family, Family::Embed | Family::MatMul)
}

/// The complete WGSL of one module. `format` must be given exactly for families that read
/// matrices.
pub fn module_source(family: Family, format: Option<WeightFormat>) -> String {
    let mut s = String::from(STEP);
    if let Some(f) = format {
        s.push('\n');
        s.push_str(f.shader());
    }
    s.push('\n');
    s.push_str(source(family));
    s
}

/// Every module the backend can build: (label, WGSL). The validation test walks this list.
pub fn all_modules() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for family in Family::ALL {
        if reads_matrices(family) {
            for f in WeightFormat::ALL {
                out.push((
                    format!("{}.{}", family.file_stem(), f.name()),
                    module_source(family, Some(f)),
                ));
            }
        } else {
            out.push((family.file_stem().to_string(), module_source(family, None)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// step.wgsl's `StepParams` has core's fields, in core's order, one 4-byte word each.
    #[test]
    fn step_params_match_core_field_for_field() {
        let body = STEP
            .split("struct StepParams {")
            .nth(1)
            .and_then(|s| s.split('}').next())
            .expect("step.wgsl declares StepParams");
        let fields: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && l.contains(':'))
            .map(|l| {
                let (name, ty) = l.split_once(':').unwrap();
                let ty = ty.trim().trim_end_matches(',');
                assert!(ty == "u32" || ty == "f32", "{name}: {ty} is not one word");
                name.trim()
            })
            .collect();
        assert_eq!(fields, unmask_core::step_params::FIELDS);
    }
}
