//! Splitting a step longer than a GPU backend runs at once (wgpu and cuda) into chunks. Chunks
//! end on multiples of the block length, so no query of one chunk may see a key of a later chunk
//! (block-causal mask): running the chunks in order over the shared KV cache computes exactly
//! the whole step.

use crate::error::{Error, Result};

/// One chunk: tokens `offset .. offset + len` of the step, predicting its last `out` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub offset: usize,
    pub len: usize,
    pub out: usize,
}

/// Chunks of at most `max` tokens for a step over `n` tokens at `start` predicting its last
/// `out_rows`.
pub fn split(
    start: usize,
    n: usize,
    out_rows: usize,
    block: usize,
    max: usize,
) -> Result<Vec<Chunk>> {
    let end = start + n;
    let out_from = end - out_rows;
    let mut chunks = Vec::new();
    let mut pos = start;
    while pos < end {
        let stop = if end - pos <= max {
            end
        } else {
            let b = (pos + max) / block * block;
            if b <= pos {
                return Err(Error::Invalid(format!(
                    "a step of {n} tokens must be split, but its block length {block} is longer \
                     than the {max} tokens this backend runs at once"
                )));
            }
            b
        };
        chunks.push(Chunk {
            offset: pos - start,
            len: stop - pos,
            out: stop.saturating_sub(out_from.max(pos)),
        });
        pos = stop;
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_steps_are_one_chunk() {
        assert_eq!(
            split(64, 32, 32, 32, 128).unwrap(),
            vec![Chunk {
                offset: 0,
                len: 32,
                out: 32
            }]
        );
    }

    #[test]
    fn long_steps_split_on_block_boundaries_and_only_the_tail_predicts() {
        // A 300-token prompt window starting at 0 with blocks of 32, at most 128 tokens a chunk.
        let c = split(0, 300, 32, 32, 128).unwrap();
        assert_eq!(
            c.iter()
                .map(|c| (c.offset, c.len, c.out))
                .collect::<Vec<_>>(),
            vec![(0, 128, 0), (128, 128, 0), (256, 44, 32)]
        );
        // A start inside a block: the first chunk ends on the next multiple of the block.
        let c = split(10, 200, 200, 32, 128).unwrap();
        assert_eq!(
            c.iter()
                .map(|c| (c.offset, c.len, c.out))
                .collect::<Vec<_>>(),
            vec![(0, 118, 118), (118, 82, 82)]
        );
        assert_eq!(c.iter().map(|c| c.out).sum::<usize>(), 200);
    }

    #[test]
    fn blocks_longer_than_a_chunk_are_an_error_only_when_splitting_is_needed() {
        assert!(split(0, 64, 64, 64, 64).is_ok());
        let e = split(0, 200, 32, 256, 128).unwrap_err().to_string();
        assert!(e.contains("block length 256"), "{e}");
    }
}
