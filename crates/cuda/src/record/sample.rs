//! Recording of `Sample`: a block per predicted row, one launch per sequence that predicts (each
//! with its own sampling parameters and seed).

use super::*;

fn sample(rec: &Rec, logits: &BufId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
    let g = rec.b.graph;
    for s in rec.seqs.iter().filter(|s| s.out > 0) {
        ls.push(launch(
            "sample",
            (s.out as u32, 1, 1),
            SAMPLE_THREADS,
            vec![
                rec.seq_ptr(*logits, s),
                rec.seq_ptr(*o, s),
                Arg::Ptr(s.params),
                u(g.buffer(*logits).cols),
            ],
        ));
    }
    Ok(())
}

pub(super) fn record(rec: &Rec, _oi: usize, op: &Op, ls: &mut Vec<Launch>) -> Result<()> {
    match op {
        Op::Sample { logits, out: o } => sample(rec, logits, o, ls),
        _ => unreachable!("not a sampling op: {op:?}"),
    }
}
