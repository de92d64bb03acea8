//! Stop strings (`"stop"` in OpenAI requests) over a growing text. Text that could be the start
//! of a stop string is held back until the next delta decides, so a stream never shows a piece
//! of a stop string that the final text cuts off: streamed deltas still add up to the final text.

pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released.
    held: String,
    matched: bool,
}

impl StopMatcher {
    /// `stops` must not contain empty strings (requests are checked before this).
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            matched: false,
        }
    }

    /// Whether a stop string has been seen: the text is final.
    pub fn matched(&self) -> bool {
        self.matched
    }

    /// Takes new text; returns what can be shown now.
    pub fn push(&mut self, delta: &str) -> String {
        if self.matched {
            return String::new();
        }
        self.held.push_str(delta);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.matched = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return out;
        }
        let keep = self.partial_suffix();
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        out
    }

    /// The text is complete: releases whatever was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Bytes at the end of `held` that begin some stop string (the longest such suffix).
    fn partial_suffix(&self) -> usize {
        let h = self.held.as_str();
        (1..=h.len())
            .rev()
            .filter(|&n| h.is_char_boundary(h.len() - n))
            .find(|&n| {
                let tail = &h[h.len() - n..];
                self.stops
                    .iter()
                    .any(|s| s.len() > n && s.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (Vec<String>, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out: Vec<String> = deltas.iter().map(|d| m.push(d)).collect();
        if !m.matched() {
            out.push(m.finish());
        }
        (out, m.matched())
    }

    #[test]
    fn without_stops_text_passes_through() {
        let (out, hit) = run(&[], &["ab", "c"]);
        assert_eq!(out, ["ab", "c", ""]);
        assert!(!hit);
    }

    #[test]
    fn a_stop_split_across_deltas_is_never_shown() {
        let (out, hit) = run(&["END"], &["x E", "N", "D tail"]);
        assert_eq!(out.concat(), "x ");
        assert_eq!(out[0], "x ");
        assert!(hit);
    }

    #[test]
    fn a_false_start_is_released_when_it_stops_matching() {
        let (out, hit) = run(&["END"], &["aE", "Nb", "c"]);
        assert_eq!(out, ["a", "ENb", "c", ""]);
        assert_eq!(out.concat(), "aENbc");
        assert!(!hit);
    }

    #[test]
    fn the_earliest_stop_wins() {
        let (out, hit) = run(&["c", "ab"], &["xxabc"]);
        assert_eq!(out.concat(), "xx");
        assert!(hit);
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        let (out, hit) = run(&["stop"], &["and st"]);
        assert_eq!(out, ["and ", "st"]);
        assert!(!hit);
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let (out, hit) = run(&["é!"], &["café", "!"]);
        assert_eq!(out.concat(), "caf");
        assert!(hit);
        let (out, _) = run(&["éx"], &["caf", "é", "y"]);
        assert_eq!(out.concat(), "caféy");
    }
}
