//! Recording of `Attention`: per sequence, its window's K/V stored into its slot's cache of the
//! layer, then attention over that cache only.

use super::*;

fn attend(
    rec: &Rec,
    qkv: &BufId,
    layer: &usize,
    heads: &Heads,
    o: &BufId,
    ls: &mut Vec<Launch>,
) -> Result<()> {
    for s in rec.seqs {
        let (k, v) = *s.kv.get(*layer).ok_or_else(|| {
            cuda_error(format!(
                "no KV cache of layer {layer} was bound for the pass"
            ))
        })?;
        let n = s.rows;
        ls.push(launch(
            "kv_store",
            (n as u32, 1, 1),
            EW,
            vec![
                rec.seq_ptr(*qkv, s),
                Arg::Ptr(k),
                Arg::Ptr(v),
                Arg::Ptr(s.params),
                u(heads.q),
                u(heads.kv),
                u(heads.dim),
            ],
        ));
        ls.push(launch(
            "attention",
            (n as u32, heads.q as u32, 1),
            ATT_THREADS,
            vec![
                rec.seq_ptr(*qkv, s),
                Arg::Ptr(k),
                Arg::Ptr(v),
                rec.seq_ptr(*o, s),
                Arg::Ptr(s.params),
                u(n),
                u(heads.q),
                u(heads.kv),
                u(heads.dim),
            ],
        ));
    }
    Ok(())
}

pub(super) fn record(rec: &Rec, _oi: usize, op: &Op, ls: &mut Vec<Launch>) -> Result<()> {
    match op {
        Op::Attention {
            qkv,
            layer,
            heads,
            out: o,
        } => attend(rec, qkv, layer, heads, o, ls),
        _ => unreachable!("not an attention op: {op:?}"),
    }
}
