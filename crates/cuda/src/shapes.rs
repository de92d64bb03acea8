//! The recorded launches of each pass shape (which slots, how many tokens and predicted rows
//! each) and when a shape earns a CUDA graph.
//!
//! Capturing and instantiating a graph of ~400 nodes costs more than launching its kernels once,
//! so a shape's first run launches directly and only a shape seen again is captured: the
//! decoding steps of a block (same window, every step) and the full chunks of a long prefill
//! replay graphs, while a prompt's one-off remainder never pays for a capture.

use crate::device::Launch;
use std::collections::HashMap;
use std::hash::Hash;

/// A pass shape: per sequence, in pass order, its KV-cache slot, tokens and predicted rows. The
/// recorded launches bake in each sequence's rows of the pass and its slot's cache, so a shape
/// names them all; a step of one sequence in slot 0 is `[(0, tokens, out)]`.
pub type Shape = Vec<(usize, usize, usize)>;

/// How a step of a recorded shape runs this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Launch each kernel.
    Direct,
    /// Capture the launches into a graph now, then replay it.
    Capture,
    /// Replay the shape's graph.
    Replay,
}

pub struct Recorded<G> {
    pub launches: Vec<Launch>,
    pub graph: Option<G>,
    runs: u64,
    last_used: u64,
}

/// Recorded shapes (keys `K`), at most `max` of them (the least recently used goes first).
pub struct Shapes<K, G> {
    map: HashMap<K, Recorded<G>>,
    clock: u64,
    max: usize,
}

impl<K: Hash + Eq + Clone, G> Shapes<K, G> {
    pub fn new(max: usize) -> Self {
        Shapes {
            map: HashMap::new(),
            clock: 0,
            max: max.max(1),
        }
    }

    /// Forgets every recording (their pointers are stale once buffers move).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn contains(&self, shape: &K) -> bool {
        self.map.contains_key(shape)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds the launches of a new shape, evicting the least recently used one when full.
    pub fn insert(&mut self, shape: K, launches: Vec<Launch>) {
        if !self.map.contains_key(&shape) && self.map.len() >= self.max {
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, r)| r.last_used)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(
            shape,
            Recorded {
                launches,
                graph: None,
                runs: 0,
                last_used: 0,
            },
        );
    }

    /// Marks a run of `shape` (recorded before) and says how it runs: directly the first time
    /// or with graphs off, captured the second time, replayed after that.
    pub fn run(&mut self, shape: &K, graphs: bool) -> Option<(Run, &mut Recorded<G>)> {
        self.clock += 1;
        let r = self.map.get_mut(shape)?;
        r.last_used = self.clock;
        let how = match (graphs, r.graph.is_some(), r.runs) {
            (false, _, _) => Run::Direct,
            (true, true, _) => Run::Replay,
            (true, false, 0) => Run::Direct,
            (true, false, _) => Run::Capture,
        };
        r.runs += 1;
        Some((how, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_is_captured_only_when_it_comes_back() {
        let mut s: Shapes<(usize, usize), &str> = Shapes::new(4);
        s.insert((32, 32), Vec::new());
        let (how, _) = s.run(&(32, 32), true).unwrap();
        assert_eq!(how, Run::Direct);
        let (how, r) = s.run(&(32, 32), true).unwrap();
        assert_eq!(how, Run::Capture);
        r.graph = Some("graph");
        assert_eq!(s.run(&(32, 32), true).unwrap().0, Run::Replay);
        assert_eq!(s.run(&(32, 32), true).unwrap().0, Run::Replay);
        // A capture that failed leaves no graph: the next run tries again.
        s.insert((7, 32), Vec::new());
        s.run(&(7, 32), true);
        assert_eq!(s.run(&(7, 32), true).unwrap().0, Run::Capture);
        assert_eq!(s.run(&(7, 32), true).unwrap().0, Run::Capture);
        assert!(
            s.run(&(8, 8), true).is_none(),
            "an unrecorded shape has no run"
        );
    }

    #[test]
    fn with_graphs_off_every_run_is_direct() {
        let mut s: Shapes<(usize, usize), ()> = Shapes::new(4);
        s.insert((1, 1), Vec::new());
        for _ in 0..3 {
            assert_eq!(s.run(&(1, 1), false).unwrap().0, Run::Direct);
        }
    }

    #[test]
    fn the_least_recently_used_shape_is_evicted() {
        let mut s: Shapes<(usize, usize), ()> = Shapes::new(2);
        s.insert((1, 1), Vec::new());
        s.insert((2, 2), Vec::new());
        s.run(&(1, 1), true);
        s.run(&(2, 2), true);
        s.run(&(1, 1), true);
        s.insert((3, 3), Vec::new());
        assert_eq!(s.len(), 2);
        assert!(s.contains(&(1, 1)) && s.contains(&(3, 3)) && !s.contains(&(2, 2)));
    }
}
