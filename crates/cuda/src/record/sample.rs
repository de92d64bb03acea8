//! Recording of `Sample`: a block per predicted row.

use super::*;

fn sample(rec: &Rec, logits: &BufId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
    let b = rec.b;
    let g = rec.b.graph;
    let out = rec.out;
    ls.push(launch(
        "sample",
        (out as u32, 1, 1),
        SAMPLE_THREADS,
        vec![
            rec.ptr(*logits),
            rec.ptr(*o),
            Arg::Ptr(b.params),
            u(g.buffer(*logits).cols),
        ],
    ));
    Ok(())
}

pub(super) fn record(rec: &Rec, _oi: usize, op: &Op, ls: &mut Vec<Launch>) -> Result<()> {
    match op {
        Op::Sample { logits, out: o } => sample(rec, logits, o, ls),
        _ => unreachable!("not a sampling op: {op:?}"),
    }
}
