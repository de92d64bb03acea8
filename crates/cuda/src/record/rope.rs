//! Recording of `QkNormRope`: per-head norms and NeoX RoPE in place, a warp per (token, head),
//! one launch per sequence (each at its own positions).

use super::*;

pub(super) fn record(rec: &Rec, oi: usize, op: &Op, ls: &mut Vec<Launch>) -> Result<()> {
    let Op::QkNormRope {
        qkv,
        q_norm,
        k_norm,
        heads,
        rot_dim,
        eps,
        ..
    } = op
    else {
        return Err(cuda_error(format!("op {oi} is not a QkNormRope")));
    };
    let b = rec.b;
    let norm = |w: &Option<unmask_core::graph::WeightId>| -> Result<Arg> {
        Ok(Arg::Ptr(match w {
            Some(w) => b.weights.vector(*w)?.0,
            None => 0,
        }))
    };
    for s in rec.seqs {
        ls.push(launch(
            "qk_norm_rope",
            (s.rows as u32, (heads.q + heads.kv) as u32, 1),
            32,
            vec![
                rec.seq_ptr(*qkv, s),
                norm(q_norm)?,
                norm(k_norm)?,
                Arg::Ptr(b.inv_freq[oi]),
                Arg::Ptr(s.params),
                u(heads.q),
                u(heads.kv),
                u(heads.dim),
                u(rot_dim / 2),
                Arg::F32(*eps),
            ],
        ));
    }
    Ok(())
}
