//! Recording of the row-wise ops: `Add`, `SwiGlu`, `TakeLastRows`.

use super::*;

fn add(rec: &Rec, a: &BufId, bb: &BufId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
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

fn swiglu(rec: &Rec, gate: &BufId, up: &BufId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
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

/// Each sequence's last `out` rows, at its predicted rows.
fn take_last_rows(rec: &Rec, x: &BufId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
    let g = rec.b.graph;
    let cols = g.buffer(*o).cols;
    for s in rec.seqs.iter().filter(|s| s.out > 0) {
        let count = s.out * cols;
        ls.push(launch(
            "take_last_rows",
            grid1(count),
            EW,
            vec![
                rec.seq_ptr(*x, s),
                rec.seq_ptr(*o, s),
                u((s.rows - s.out) * cols),
                u(count),
            ],
        ));
    }
    Ok(())
}

pub(super) fn record(rec: &Rec, _oi: usize, op: &Op, ls: &mut Vec<Launch>) -> Result<()> {
    match op {
        Op::Add { a, b, out: o } => add(rec, a, b, o, ls),
        Op::SwiGlu { gate, up, out: o } => swiglu(rec, gate, up, o, ls),
        Op::TakeLastRows { x, out: o } => take_last_rows(rec, x, o, ls),
        _ => unreachable!("not an elementwise op: {op:?}"),
    }
}
