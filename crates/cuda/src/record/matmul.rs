//! Recording of `MatMul`: 32 weight rows by 8 tokens per block, token tiles in grid.x.

use super::*;

/// Most blocks in grid.y (CUDA's limit), so a matrix has at most this many row blocks.
pub const MAX_GRID_Y: usize = 65_535;

/// The grid of `matmul_*` for `rows` weight rows and `tokens` rows of x: token tiles in x (the
/// fastest-issued dimension), row blocks in y, so the blocks reading one weight tile are issued
/// together (matmul.cu).
pub fn grid(rows: usize, tokens: usize) -> (u32, u32, u32) {
    (
        tokens.div_ceil(MM_TOK) as u32,
        rows.div_ceil(MM_BLOCK_ROWS) as u32,
        1,
    )
}

fn product(rec: &Rec, x: &BufId, weight: &WeightId, o: &BufId, ls: &mut Vec<Launch>) -> Result<()> {
    let b = rec.b;
    let w = b.weights.matrix(*weight)?;
    let m = rec.rows(*x);
    ls.push(launch(
        format!("matmul_{}", w.format.suffix()),
        grid(w.rows, m),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks in the order CUDA issues them (x fastest), as (token tile, row block).
    fn issue_order(g: (u32, u32, u32)) -> Vec<(u32, u32)> {
        (0..g.1)
            .flat_map(|y| (0..g.0).map(move |x| (x, y)))
            .collect()
    }

    /// The blocks that read one weight tile are issued one after another, so they run together
    /// and the tile is fetched from DRAM once; the lm_head of LLaDA2.0-mini (157,184 rows) with a
    /// 32-token window is the case that matters (4 token tiles).
    #[test]
    fn blocks_sharing_a_weight_tile_are_issued_together() {
        for (rows, tokens) in [(157_184, 32), (3072, 32), (4096, 1), (100, 9)] {
            let g = grid(rows, tokens);
            let order = issue_order(g);
            let tiles = tokens.div_ceil(MM_TOK);
            assert_eq!(order.len(), tiles * rows.div_ceil(MM_BLOCK_ROWS));
            for (i, (x, y)) in order.iter().enumerate() {
                assert_eq!(*y as usize, i / tiles, "row block of issue {i}");
                assert_eq!(*x as usize, i % tiles);
            }
            // Every (token tile, row block) pair exactly once.
            let mut seen = order.clone();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), order.len());
        }
    }

    #[test]
    fn the_largest_vocabularies_fit_the_grid() {
        let g = grid(157_184, 128);
        assert!(g.1 as usize <= MAX_GRID_Y && g.0 == 16, "{g:?}");
        assert!(grid(MAX_GRID_Y * MM_BLOCK_ROWS, 1).1 as usize <= MAX_GRID_Y);
        assert!(grid(MAX_GRID_Y * MM_BLOCK_ROWS + 1, 1).1 as usize > MAX_GRID_Y);
    }
}
