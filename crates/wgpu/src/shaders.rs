//! The WGSL sources, one file per op family, and how a module is put together: the step
//! parameters (group 1) first, then the weight format's `w_load4` for families that read
//! matrices, then the family itself. WGSL has no includes, so this concatenation is the linker.

use crate::format::WeightFormat;

pub const STEP: &str = include_str!("../shaders/step.wgsl");
pub const FORMAT_F32: &str = include_str!("../shaders/formats/f32.wgsl");
pub const FORMAT_BF16: &str = include_str!("../shaders/formats/bf16.wgsl");
pub const FORMAT_F16: &str = include_str!("../shaders/formats/f16.wgsl");
// The quantized formats' runs in their integer form (`WInt`), shared by both.
pub const FORMAT_Q8_0: &str = concat!(
    include_str!("../shaders/formats/int_run.wgsl"),
    include_str!("../shaders/formats/q8_0.wgsl")
);
pub const FORMAT_Q4: &str = concat!(
    include_str!("../shaders/formats/int_run.wgsl"),
    include_str!("../shaders/formats/q4.wgsl")
);

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

/// Most expert-stack bindings one expert dispatch reads (`expert_parts`).
pub const MAX_EXPERT_PARTS: usize = 16;

/// First binding of the expert kernels' extra weight parts: part `p > 0` is `w_p` at
/// `EXPERT_PART_BINDING + p` (part 0 is `w`, binding 1).
pub const EXPERT_PART_BINDING: u32 = 40;

/// What a device's modules are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleOptions {
    /// How many expert-stack bindings (1 ..= MAX_EXPERT_PARTS) one expert dispatch reads.
    pub expert_parts: usize,
    /// Whether the matrix-vector kernels reduce with subgroup operations (the device has them).
    pub subgroups: bool,
    /// Whether q8_0 / q4 modules also hold the integer forms (`WgpuOptions::int8_dots`), and
    /// the norm, attention and MoE modules their kernels that quantize what they write; apart
    /// from them no module uses `dot4I8Packed` or `pack4xI8`, which WGSL has only as a language
    /// extension.
    pub int8: bool,
}

impl Default for ModuleOptions {
    fn default() -> Self {
        ModuleOptions {
            expert_parts: 1,
            subgroups: false,
            int8: false,
        }
    }
}

const MATVEC: &str = include_str!("../shaders/matvec/matvec.wgsl");
const SUM256: &str = include_str!("../shaders/sum256.wgsl");
const ARGMAX: &str = include_str!("../shaders/argmax.wgsl");
const REDUCE_SHARED: &str = include_str!("../shaders/matvec/shared.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../shaders/matvec/subgroup.wgsl");
const EXPERTS_MV: &str = include_str!("../shaders/matvec/experts.wgsl");
const INT8: &str = include_str!("../shaders/matvec/int8.wgsl");
/// The 8-bit blocks (`xq_out`, `quantize_block`), and the kernels of other families that write
/// them for the product after them (program/int8.rs, `Folds`; `block_writers`).
const QUANTIZE: &str = include_str!("../shaders/int8/quantize.wgsl");
const QUANTIZE_NORM: &str = include_str!("../shaders/int8/norm.wgsl");
const QUANTIZE_ATTENTION: &str = include_str!("../shaders/int8/attention.wgsl");
const QUANTIZE_COMBINE: &str = include_str!("../shaders/int8/combine.wgsl");

/// Whether the format has the integer form of the matrix-vector kernels (`w_int4`): q8_0 and
/// q4, whose codes meet 8-bit activations in `dot4I8Packed` (matvec/int8.wgsl).
pub fn has_int_form(format: WeightFormat) -> bool {
    format.shader().contains("fn w_int4(")
}

/// Entry-point suffix of the matrix-vector kernels' integer form.
pub const INT8_SUFFIX: &str = "_q";

/// One form of the matrix-vector templates (matvec.wgsl, experts.wgsl): how a weight run is
/// loaded, an activation run read, and the two multiplied.
#[derive(Clone, Copy)]
struct MatvecForm {
    suffix: &'static str,
    int8: bool,
    /// (placeholder, text) pairs.
    fills: [(&'static str, &'static str); 4],
}

impl MatvecForm {
    const ALL: [MatvecForm; 2] = [
        MatvecForm {
            suffix: "",
            int8: false,
            fills: [
                ("{wrun}", "vec4<f32>"),
                ("{xrun}", "x_run"),
                ("{dot}", "dot"),
                ("{load}", "load4"),
            ],
        },
        MatvecForm {
            suffix: INT8_SUFFIX,
            int8: true,
            fills: [
                ("{wrun}", "WInt"),
                ("{xrun}", "xq_run"),
                ("{dot}", "int_dot"),
                ("{load}", "int4"),
            ],
        },
    ];

    /// The template with this form's names (`w_{load}` reads a matrix, `we_{load}` an expert
    /// stack through the switch over its part bindings).
    fn fill(&self, template: &str) -> String {
        let mut s = template.to_string();
        for (key, text) in self.fills {
            s = s.replace(key, text);
        }
        s
    }
}

/// Features per workgroup of the matrix-vector expert kernels (EGU_FEATS and EDN_FEATS in
/// matvec/experts.wgsl): the x extent of their grids is the features over these.
pub const EXPERT_MV_FEATURES: (usize, usize) = (4, 8);

/// The matrix-vector kernels: (entry point, most rows, output features per workgroup). Each
/// instance keeps rows x features = MV_ACC accumulators.
pub const MATVECS: [(&str, usize, usize); 2] = [("matvec8", 8, 8), ("matvec32", 32, 2)];

/// (most rows, output features per workgroup) of the matrix-vector entry point `name` (in
/// either form).
pub fn matvec_shape(name: &str) -> (usize, usize) {
    let base = name.strip_suffix(INT8_SUFFIX).unwrap_or(name);
    let (_, rows, feats) = MATVECS
        .into_iter()
        .find(|m| m.0 == base)
        .expect("a matrix-vector entry point");
    (rows, feats)
}

/// The complete WGSL of one module. `format` must be given exactly for families that read
/// matrices. The MatMul family also gets `w_load4` once per expert part (`w_load4_p` over
/// `w_p`) and `we_load4(part, ..)`, which picks one, and the matrix-vector kernels with the
/// chosen reduction (the dense ones, instanced per row bound, and the experts'); other
/// families ignore the options. The norm and MoE families get
/// `sum256` (their fused and plain norms share its tree), the sampler and MoE families
/// `pair_wins` (their argmax trees share its order).
pub fn module_source(family: Family, format: Option<WeightFormat>, opts: &ModuleOptions) -> String {
    let mut s = String::from(STEP);
    if let Some(f) = format {
        s.push('\n');
        s.push_str(f.shader());
        if family == Family::MatMul {
            s.push_str(&expert_loaders(f.shader(), opts.expert_parts));
        }
    }
    s.push('\n');
    s.push_str(source(family));
    if matches!(family, Family::Norm | Family::Moe) {
        s.push('\n');
        s.push_str(SUM256);
    }
    if matches!(family, Family::Sample | Family::Moe) {
        s.push('\n');
        s.push_str(ARGMAX);
    }
    if let Some(fold) = block_writers(family).filter(|_| opts.int8) {
        for part in [QUANTIZE, fold] {
            s.push('\n');
            s.push_str(part);
        }
    }
    if family == Family::MatMul {
        let int8 = opts.int8 && format.is_some_and(has_int_form);
        for form in MatvecForm::ALL.into_iter().filter(|f| int8 || !f.int8) {
            for (name, rows, feats) in MATVECS {
                s.push('\n');
                s.push_str(
                    &form
                        .fill(MATVEC)
                        .replace("{name}", &format!("{name}{}", form.suffix))
                        .replace("{rows}", &rows.to_string())
                        .replace("{feats}", &feats.to_string()),
                );
            }
            s.push('\n');
            s.push_str(&form.fill(EXPERTS_MV).replace("{sfx}", form.suffix));
        }
        if int8 {
            for part in [QUANTIZE, INT8] {
                s.push('\n');
                s.push_str(part);
            }
        }
        s.push('\n');
        s.push_str(if opts.subgroups {
            REDUCE_SUBGROUP
        } else {
            REDUCE_SHARED
        });
    }
    s
}

/// The kernels of a family that quantize what they write (shaders/int8/), if it has them.
fn block_writers(family: Family) -> Option<&'static str> {
    match family {
        Family::Norm => Some(QUANTIZE_NORM),
        Family::Attention => Some(QUANTIZE_ATTENTION),
        Family::Moe => Some(QUANTIZE_COMBINE),
        _ => None,
    }
}

/// The format's loaders (`w_load4`, and `w_int4` where it has the integer form) again over each
/// extra part's binding, and `we_load4` / `we_int4`, the switches the expert kernels read
/// through. WGSL cannot index bindings or pass storage pointers, so the loaders are instantiated
/// per binding: the format's text from `fn w_load4(` on (the functions that read `w` come last
/// in a format file), every function there renamed and `w[` read as `w_p[`.
fn expert_loaders(format: &str, parts: usize) -> String {
    let parts = parts.clamp(1, MAX_EXPERT_PARTS);
    let body = &format[format
        .find("fn w_load4(")
        .expect("every weight format defines w_load4")..];
    let loaders: &[(&str, &str)] = if format.contains("fn w_int4(") {
        &[("load4", "vec4<f32>"), ("int4", "WInt")]
    } else {
        &[("load4", "vec4<f32>")]
    };
    let mut s = String::new();
    for p in 1..parts {
        s.push_str(&format!(
            "\n@group(0) @binding({}) var<storage, read> w_{p}: array<u32>;\n",
            EXPERT_PART_BINDING + p as u32
        ));
        s.push_str(&rename_words(body, p));
    }
    s.push_str(
        "\n// The expert kernels' weights: `part` is the binding of the expert's stack part.\n",
    );
    for (name, ty) in loaders {
        s.push_str(&format!(
            "fn we_{name}(part: u32, base: u32, c4: u32) -> {ty} {{\n    switch part {{\n"
        ));
        for p in 1..parts {
            s.push_str(&format!(
                "        case {p}u: {{ return w_{name}_{p}(base, c4); }}\n"
            ));
        }
        s.push_str(&format!(
            "        default: {{ return w_{name}(base, c4); }}\n    }}\n}}\n"
        ));
    }
    s
}

/// `body` with every function it defines renamed NAME_p (definitions and calls) and every
/// index into `w` (a `w[` not preceded by a name character) into `w_p`.
fn rename_words(body: &str, p: usize) -> String {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let defined: Vec<&str> = body
        .split("fn ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .collect();
    let mut out = String::with_capacity(body.len() + 64);
    let mut prev: Option<char> = None;
    let mut i = 0;
    while i < body.len() {
        let rest = &body[i..];
        let c = rest.chars().next().expect("inside the body");
        let at_name = !prev.is_some_and(name_char);
        if at_name && rest.starts_with("w[") {
            out.push_str(&format!("w_{p}["));
            i += 2;
            prev = Some('[');
            continue;
        }
        if let Some(f) = defined
            .iter()
            .find(|f| at_name && rest.starts_with(&format!("{f}(")))
        {
            out.push_str(&format!("{f}_{p}("));
            i += f.len() + 1;
            prev = Some('(');
            continue;
        }
        out.push(c);
        i += c.len_utf8();
        prev = Some(c);
    }
    out
}

/// Every module the backend can build: (label, WGSL, whether it needs subgroups). The
/// validation test walks this list (matrix families with one expert part and with the most,
/// with either reduction; the latter with the integer forms; the others without and with the
/// kernels that quantize what they write).
pub fn all_modules() -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for family in Family::ALL {
        if reads_matrices(family) {
            for f in WeightFormat::ALL {
                for (parts, subgroups) in [(1, false), (MAX_EXPERT_PARTS, true)] {
                    let opts = ModuleOptions {
                        expert_parts: parts,
                        subgroups,
                        // The integer forms in one of the two.
                        int8: subgroups,
                    };
                    out.push((
                        format!(
                            "{}.{}.parts{parts}.sg{subgroups}",
                            family.file_stem(),
                            f.name()
                        ),
                        module_source(family, Some(f), &opts),
                        subgroups && family == Family::MatMul,
                    ));
                }
            }
        } else {
            // With the integer option too where it adds the kernels that quantize.
            let int8s: &[bool] = if block_writers(family).is_some() {
                &[false, true]
            } else {
                &[false]
            };
            for &int8 in int8s {
                let opts = ModuleOptions {
                    int8,
                    ..ModuleOptions::default()
                };
                let label = if int8 { ".int8" } else { "" };
                out.push((
                    format!("{}{label}", family.file_stem()),
                    module_source(family, None, &opts),
                    false,
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The extra parts' loaders read their own binding and nothing of `w`.
    #[test]
    fn expert_loaders_rename_only_the_weight_words() {
        for f in WeightFormat::ALL {
            let s = expert_loaders(f.shader(), 3);
            assert!(s.contains("fn w_load4_2("), "{}", f.name());
            assert!(s.contains("w_2["), "{}", f.name());
            // Every function copied for part p reads `w_p` and calls part p's functions only.
            let names: Vec<&str> = f.shader()[f.shader().find("fn w_load4(").unwrap()..]
                .split("fn ")
                .skip(1)
                .map(|r| r.split('(').next().unwrap())
                .collect();
            for copy in s.split("\nfn ").skip(1).filter(|c| !c.starts_with("we_")) {
                let copy = copy.split("\n}").next().unwrap();
                let p = copy.split('(').next().unwrap().rsplit('_').next().unwrap();
                assert!(
                    !copy.contains(" w[") && !copy.contains("(w["),
                    "{}: {copy}",
                    f.name()
                );
                for n in &names {
                    for call in copy.match_indices(&format!("{n}(")).map(|(i, _)| i) {
                        let before = copy[..call].chars().last();
                        assert!(
                            before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_'),
                            "{}: part {p} calls {n}: {copy}",
                            f.name()
                        );
                    }
                }
            }
        }
    }

    /// `dot4I8Packed` (a WGSL language extension) is in a module only when the integer forms
    /// are asked for, and then in q8_0 / q4 matrix modules only; `pack4xI8` (the same
    /// extension) only then too, in those and in the modules that quantize what they write.
    #[test]
    fn only_int8_modules_use_the_packed_dot_product() {
        for family in Family::ALL.into_iter().filter(|&f| !reads_matrices(f)) {
            for int8 in [false, true] {
                let opts = ModuleOptions {
                    int8,
                    ..ModuleOptions::default()
                };
                let s = module_source(family, None, &opts);
                let writes = matches!(family, Family::Norm | Family::Attention | Family::Moe);
                assert_eq!(
                    s.contains("pack4xI8"),
                    int8 && writes,
                    "{family:?} int8={int8}"
                );
                assert!(!s.contains("dot4I8Packed"), "{family:?}");
            }
        }
        for f in WeightFormat::ALL {
            for int8 in [false, true] {
                let opts = ModuleOptions {
                    int8,
                    ..ModuleOptions::default()
                };
                let s = module_source(Family::MatMul, Some(f), &opts);
                assert_eq!(
                    s.contains("dot4I8Packed"),
                    int8 && has_int_form(f),
                    "{} int8={int8}",
                    f.name()
                );
            }
        }
    }

    /// The one-word fields of a struct of step.wgsl, in order, up to its first array member.
    fn word_fields(name: &str) -> Vec<&'static str> {
        let body = STEP
            .split(&format!("struct {name} {{"))
            .nth(1)
            .and_then(|s| s.split('}').next())
            .expect("step.wgsl declares the struct");
        body.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && l.contains(':'))
            .map(|l| l.split_once(':').unwrap())
            .take_while(|(_, ty)| !ty.contains("array"))
            .map(|(name, ty)| {
                let ty = ty.trim().trim_end_matches(',');
                assert!(ty == "u32" || ty == "f32", "{name}: {ty} is not one word");
                name.trim()
            })
            .collect()
    }

    /// step.wgsl's `StepParams` has core's fields, in core's order, one 4-byte word each, then
    /// the table of `Seq` entries, which are core's `SeqParams`; its length is core's.
    /// The host sizes the matrix-vector expert grids with the features the kernels compute.
    #[test]
    fn expert_matvec_features_match_the_kernels() {
        let (gate_up, down) = EXPERT_MV_FEATURES;
        let matmul = source(Family::MatMul);
        assert!(matmul.contains(&format!("const EGU_FEATS: u32 = {gate_up}u;\n")));
        assert!(matmul.contains(&format!("const EDN_FEATS: u32 = {down}u;\n")));
    }

    #[test]
    fn step_params_match_core_field_for_field() {
        use unmask_core::step_params::{FIELDS, MAX_PASS_SEQS, SEQ_FIELDS};
        assert_eq!(word_fields("StepParams"), FIELDS);
        assert_eq!(word_fields("Seq"), SEQ_FIELDS);
        assert!(STEP.contains("seq: array<Seq, MAX_SEQS>,"));
        assert!(STEP.contains(&format!("const MAX_SEQS: u32 = {MAX_PASS_SEQS}u;")));
    }
}
