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
    let rows = |id: BufId| rec.rows(id);
    let ptr = |id: BufId| rec.ptr(id);
    let (w, d) = b.weights.vector(*weight)?;
    let groups = rows(*x) * g.buffer(*x).cols / d;
    ls.push(launch(
        "rms_norm",
        (groups as u32, 1, 1),
        EW,
        vec![ptr(*x), Arg::Ptr(w), ptr(*o), u(d), Arg::F32(*eps)],
    ));
    Ok(())
}
