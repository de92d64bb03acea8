//! Recording of `MatMul`: 32 weight rows by 8 tokens per block.

use super::*;

fn product(rec: &Rec, x: &BufId, weight: &WeightId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
    let b = rec.b;
    let w = b.weights.matrix(*weight)?;
    let m = rec.rows(*x);
    ls.push(launch(
        format!("matmul_{}", w.format.suffix()),
        (
            w.rows.div_ceil(MM_BLOCK_ROWS) as u32,
            m.div_ceil(MM_TOK) as u32,
            1,
        ),
        MM_THREADS,
        vec![
            rec.ptr(*x),
            Arg::Ptr(w.ptr),
            rec.ptr(*o),
            u(m),
            u(w.cols),
            u(w.rows),
        ],
    ));
    Ok(())
}

pub(super) fn record(rec: &Rec, _oi: usize, op: &Op, ls: &mut Vec<Launch>) -> Result<()> {
    match op {
        Op::MatMul { x, weight, out: o } => product(rec, x, weight, o, ls),
        _ => unreachable!("not a matrix op: {op:?}"),
    }
}
