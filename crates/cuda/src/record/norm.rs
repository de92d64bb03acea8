//! Recording of `RmsNorm` and `AddRmsNorm`: a block per group of columns.

use super::*;

/// The norm of `x` (or, with `add = Some((b, sum))`, of `sum = x + b`) into `o`.
fn rms_norm(
    rec: &Rec,
    x: BufId,
    add: Option<(BufId, BufId)>,
    weight: WeightId,
    o: BufId,
    eps: f32,
    ls: &mut Vec<Launch>,
) -> Result<()> {
    let (w, d) = rec.b.weights.vector(weight)?;
    let groups = rec.rows(x) * rec.b.graph.buffer(x).cols / d;
    let (kernel, mut args) = match add {
        None => ("rms_norm", vec![rec.ptr(x), Arg::Ptr(w)]),
        Some((b, sum)) => (
            "add_rms_norm",
            vec![rec.ptr(x), rec.ptr(b), Arg::Ptr(w), rec.ptr(sum)],
        ),
    };
    args.extend([rec.ptr(o), u(d), Arg::F32(eps)]);
    ls.push(launch(kernel, (groups as u32, 1, 1), EW, args));
    Ok(())
}

pub(super) fn record(rec: &Rec, _oi: usize, op: &Op, ls: &mut Vec<Launch>) -> Result<()> {
    match op {
        Op::RmsNorm {
            x,
            weight,
            out: o,
            eps,
        } => rms_norm(rec, *x, None, *weight, *o, *eps, ls),
        Op::AddRmsNorm {
            a,
            b,
            weight,
            sum,
            out: o,
            eps,
        } => rms_norm(rec, *a, Some((*b, *sum)), *weight, *o, *eps, ls),
        _ => unreachable!("not a norm op: {op:?}"),
    }
}
