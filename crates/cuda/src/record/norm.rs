//! Recording of `RmsNorm` and `AddRmsNorm`: a block per group of columns.

use super::*;

fn rms_norm(
    rec: &Rec,
    x: &BufId,
    weight: &WeightId,
    o: &BufId,
    eps: &f32,
    ls: &mut Vec<Launch>,
) -> Result<()> {
    let b = rec.b;
    let g = rec.b.graph;
    let (w, d) = b.weights.vector(*weight)?;
    let groups = rec.rows(*x) * g.buffer(*x).cols / d;
    ls.push(launch(
        "rms_norm",
        (groups as u32, 1, 1),
        EW,
        vec![rec.ptr(*x), Arg::Ptr(w), rec.ptr(*o), u(d), Arg::F32(*eps)],
    ));
    Ok(())
}

pub(super) fn record(rec: &Rec, _oi: usize, op: &Op, ls: &mut Vec<Launch>) -> Result<()> {
    match op {
        Op::RmsNorm {
            x,
            weight,
            out: o,
            eps,
        } => rms_norm(rec, x, weight, o, eps, ls),
        Op::AddRmsNorm {
            a,
            b,
            weight,
            sum,
            out: o,
            eps,
        } => {
            let (w, d) = rec.b.weights.vector(*weight)?;
            let groups = rec.rows(*a) * rec.b.graph.buffer(*a).cols / d;
            let args = vec![
                rec.ptr(*a),
                rec.ptr(*b),
                Arg::Ptr(w),
                rec.ptr(*sum),
                rec.ptr(*o),
                u(d),
                Arg::F32(*eps),
            ];
            ls.push(launch("add_rms_norm", (groups as u32, 1, 1), EW, args));
            Ok(())
        }
        _ => unreachable!("not a norm op: {op:?}"),
    }
}
