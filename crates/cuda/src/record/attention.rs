//! Recording of `Attention`: the window's K/V stored into the layer's cache, then attention over it.

use super::*;

fn attend(
    rec: &Rec,
    qkv: &BufId,
    layer: &usize,
    heads: &Heads,
    o: &BufId,
    ls: &mut Vec<Launch>,
) -> Result<()> {
    let b = rec.b;
    let n = rec.n;
    let (k, v) = b.kv[*layer];
    ls.push(launch(
        "kv_store",
        (n as u32, 1, 1),
        EW,
        vec![
            rec.ptr(*qkv),
            Arg::Ptr(k),
            Arg::Ptr(v),
            Arg::Ptr(b.params),
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
            rec.ptr(*qkv),
            Arg::Ptr(k),
            Arg::Ptr(v),
            rec.ptr(*o),
            Arg::Ptr(b.params),
            u(n),
            u(heads.q),
            u(heads.kv),
            u(heads.dim),
        ],
    ));
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
