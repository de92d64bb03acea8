//! Recording of `Embed`: one gather launch (a block per 256 columns and token).

use super::*;

fn gather(rec: &Rec, ids: &BufId, table: &WeightId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
    let b = rec.b;
    let n = rec.n;
    let t = b.weights.matrix(*table)?;
    ls.push(launch(
        format!("embed_{}", t.format.suffix()),
        (t.cols.div_ceil(EW as usize) as u32, n as u32, 1),
        EW,
        vec![
            rec.ptr(*ids),
            Arg::Ptr(t.ptr),
            u(t.rows),
            u(t.cols),
            rec.ptr(*o),
        ],
    ));
    Ok(())
}

pub(super) fn record(rec: &Rec, _oi: usize, op: &Op, ls: &mut Vec<Launch>) -> Result<()> {
    match op {
        Op::Embed { ids, table, out: o } => gather(rec, ids, table, o, ls),
        _ => unreachable!("not an embedding op: {op:?}"),
    }
}
