//! Recording of the row-wise ops: `Add`, `SwiGlu`, `TakeLastRows`.

use super::*;

pub(super) fn add(rec: &Rec, a: &BufId, bb: &BufId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
    let g = rec.b.graph;
    let count = rec.rows(*o) * g.buffer(*o).cols;
    ls.push(launch(
        "add",
        grid1(count),
        EW,
        vec![rec.ptr(*a), rec.ptr(*bb), rec.ptr(*o), u(count)],
    ));
    Ok(())
}

pub(super) fn swiglu(
    rec: &Rec,
    gate: &BufId,
    up: &BufId,
    o: &BufId,
    ls: &mut Vec<Launch>,
) -> Result<()> {
    let g = rec.b.graph;
    let count = rec.rows(*o) * g.buffer(*o).cols;
    ls.push(launch(
        "swiglu",
        grid1(count),
        EW,
        vec![rec.ptr(*gate), rec.ptr(*up), rec.ptr(*o), u(count)],
    ));
    Ok(())
}

pub(super) fn take_last_rows(rec: &Rec, x: &BufId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
    let g = rec.b.graph;
    let n = rec.n;
    let out = rec.out;
    let cols = g.buffer(*o).cols;
    let count = out * cols;
    ls.push(launch(
        "take_last_rows",
        grid1(count),
        EW,
        vec![rec.ptr(*x), rec.ptr(*o), u((n - out) * cols), u(count)],
    ));
    Ok(())
}
