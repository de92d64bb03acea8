//! Recording of the row-wise ops: `Add`, `SwiGlu`, `TakeLastRows`.

use super::*;

pub(super) fn add(rec: &Rec, a: &BufId, bb: &BufId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
    let g = rec.b.graph;
    let rows = |id: BufId| rec.rows(id);
    let ptr = |id: BufId| rec.ptr(id);
    let count = rows(*o) * g.buffer(*o).cols;
    ls.push(launch(
        "add",
        grid1(count),
        EW,
        vec![ptr(*a), ptr(*bb), ptr(*o), u(count)],
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
    let rows = |id: BufId| rec.rows(id);
    let ptr = |id: BufId| rec.ptr(id);
    let count = rows(*o) * g.buffer(*o).cols;
    ls.push(launch(
        "swiglu",
        grid1(count),
        EW,
        vec![ptr(*gate), ptr(*up), ptr(*o), u(count)],
    ));
    Ok(())
}

pub(super) fn take_last_rows(rec: &Rec, x: &BufId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
    let g = rec.b.graph;
    let n = rec.n;
    let out = rec.out;
    let ptr = |id: BufId| rec.ptr(id);
    let cols = g.buffer(*o).cols;
    let count = out * cols;
    ls.push(launch(
        "take_last_rows",
        grid1(count),
        EW,
        vec![ptr(*x), ptr(*o), u((n - out) * cols), u(count)],
    ));
    Ok(())
}
