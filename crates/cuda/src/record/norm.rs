//! Recording of `RmsNorm`: a block per group of columns.

use super::*;

pub(super) fn record(
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
