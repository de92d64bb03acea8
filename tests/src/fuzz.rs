//! A seeded mutation fuzzer that runs on stable Rust inside `cargo test` (no nightly, no
//! sanitizers): seeds (valid inputs and the checked-in corpus of bad ones) are mutated byte-wise
//! and, for JSON, node-wise; every input must give `Ok` or a clean `Err`, never a panic, and
//! within a time bound. The same seed gives the same inputs, so a failure replays: it prints
//! the seed and writes the input under `target/fuzz-failures/`.
//!
//! `UNMASK_FUZZ_ITERS` (default per target) and `UNMASK_FUZZ_SEED` run longer or other campaigns.

use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The synthetic weights' SplitMix64, with the draws mutations need.
pub struct Rng(unmask_core::synthetic::SplitMix);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(unmask_core::synthetic::SplitMix(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Values that find edges: sizes that overflow, negative or fractional counts, paths out of a
/// directory, wrong types.
pub const INTERESTING: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "31",
    "32",
    "33",
    "255",
    "65536",
    "100000",
    "1000000000",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-1e308",
    "0.5",
    "-0.0",
    "1e-45",
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "\"\"",
    "\"../../etc/passwd\"",
    "\"/etc/passwd\"",
    "\"model.safetensors\"",
    "\"F64\"",
    "\"BF16\"",
    "\"U8\"",
    "[0, 0]",
    "[1, 18446744073709551615]",
    "[4294967296, 4294967296]",
    "\"\\u0000\"",
    "\"<|mask|>\"",
    "\"{% for i in range(100000) %}x{% endfor %}\"",
    "\"{{ raise_exception('x') }}\"",
];

/// One mutation of `input`, byte-wise.
pub fn mutate_bytes(rng: &mut Rng, input: &[u8], focus: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    // Most mutations land in the first `focus` bytes (a file's header), some anywhere.
    let span = if focus > 0 && !rng.chance(8) {
        focus.min(out.len())
    } else {
        out.len()
    };
    let at = |rng: &mut Rng, len: usize| rng.below(len.max(1));
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = at(rng, span);
                if i < out.len() {
                    out[i] ^= 1 << rng.below(8);
                }
            }
            1 if !out.is_empty() => {
                let i = at(rng, span);
                if i < out.len() {
                    out[i] = rng.next_u64() as u8;
                }
            }
            2 => {
                let i = at(rng, span).min(out.len());
                let t = INTERESTING[rng.below(INTERESTING.len())].as_bytes();
                out.splice(i..i, t.iter().copied());
            }
            3 if !out.is_empty() => {
                let i = at(rng, span).min(out.len() - 1);
                let n = (1 + rng.below(16)).min(out.len() - i);
                out.drain(i..i + n);
            }
            4 => {
                let n = rng.below(out.len() + 1);
                out.truncate(n);
            }
            5 if !out.is_empty() => {
                let i = at(rng, span).min(out.len() - 1);
                let n = (1 + rng.below(32)).min(out.len() - i);
                let piece = out[i..i + n].to_vec();
                out.splice(i..i, piece);
            }
            _ => {
                // Little-endian u64 overwrite: lengths and offsets.
                let i = at(rng, span);
                let v = [0u64, 1, u32::MAX as u64, u64::MAX, 1 << 40][rng.below(5)];
                for (k, b) in v.to_le_bytes().iter().enumerate() {
                    if let Some(x) = out.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
        }
    }
    out
}

/// One mutation of a JSON document, node-wise: a value replaced by an interesting one, a key
/// removed or duplicated under another name, an array emptied or grown.
pub fn mutate_json(rng: &mut Rng, v: &Value) -> Value {
    let mut out = v.clone();
    for _ in 0..1 + rng.below(3) {
        let mut paths = Vec::new();
        collect_paths(&out, &mut Vec::new(), &mut paths);
        let path = &paths[rng.below(paths.len())];
        let node = node_at(&mut out, path);
        match rng.below(5) {
            0 | 1 => {
                let t = INTERESTING[rng.below(INTERESTING.len())];
                *node = serde_json::from_str(t).unwrap_or(Value::Null);
            }
            2 => match node {
                Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(rng.below(m.len())).cloned().unwrap();
                    m.remove(&k);
                }
                Value::Array(a) if !a.is_empty() => {
                    let n = rng.below(a.len());
                    a.truncate(n);
                }
                other => *other = Value::String("x".repeat(rng.below(64))),
            },
            3 => match node {
                Value::Array(a) if !a.is_empty() => {
                    let x = a[rng.below(a.len())].clone();
                    for _ in 0..1 + rng.below(64) {
                        a.push(x.clone());
                    }
                }
                Value::Number(n) => {
                    let f = n.as_f64().unwrap_or(0.0);
                    *node = serde_json::json!(f * [2.0, -1.0, 1000.0, 0.5][rng.below(4)]);
                }
                other => *other = Value::Array(vec![other.clone()]),
            },
            _ => {
                if let Value::Object(m) = node {
                    if let Some(k) = m.keys().nth(rng.below(m.len().max(1))).cloned() {
                        let v = m[&k].clone();
                        m.insert(format!("{k}_"), v);
                    }
                }
            }
        }
    }
    out
}

fn collect_paths(v: &Value, at: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                at.push(PathStep::Key(k.clone()));
                collect_paths(c, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                at.push(PathStep::Index(i));
                collect_paths(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn node_at<'a>(v: &'a mut Value, path: &[PathStep]) -> &'a mut Value {
    path.iter().fold(v, |v, step| match step {
        PathStep::Key(k) => &mut v[k.as_str()],
        PathStep::Index(i) => &mut v[*i],
    })
}

/// What one input did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcomes {
    pub accepted: usize,
    pub refused: usize,
    pub slowest: Duration,
}

/// A fuzz campaign over one parser.
pub struct Campaign<'a> {
    pub name: &'a str,
    pub seeds: Vec<Vec<u8>>,
    pub iterations: usize,
    /// Bytes at the start of an input that most byte mutations go to (0: anywhere).
    pub focus: usize,
    /// Mutate as JSON where the seed parses as JSON.
    pub json: bool,
    /// Longest any one input may take.
    pub time_limit: Duration,
}

impl Campaign<'_> {
    /// Runs `parse` on every seed and on `iterations` mutants; `parse` returns `Ok(true)` when it
    /// accepted the input and `Ok(false)` when it refused it with a clean error. Panics (the
    /// test fails) on a panic inside `parse` or an input over the time limit.
    pub fn run(&self, parse: &mut dyn FnMut(&[u8]) -> bool) -> Outcomes {
        let iterations = std::env::var("UNMASK_FUZZ_ITERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(self.iterations);
        let seed = std::env::var("UNMASK_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x756e_6d61_736b);
        let mut rng = Rng::new(seed ^ hash(self.name.as_bytes()));
        let jsons: Vec<Option<Value>> = self
            .seeds
            .iter()
            .map(|s| self.json.then(|| serde_json::from_slice(s).ok()).flatten())
            .collect();
        let mut out = Outcomes::default();
        for i in 0..self.seeds.len() + iterations {
            let input = if i < self.seeds.len() {
                self.seeds[i].clone()
            } else {
                let k = rng.below(self.seeds.len());
                match &jsons[k] {
                    Some(v) if !rng.chance(4) => {
                        serde_json::to_vec(&mutate_json(&mut rng, v)).unwrap()
                    }
                    _ => mutate_bytes(&mut rng, &self.seeds[k], self.focus),
                }
            };
            let t = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| parse(&input)));
            let took = t.elapsed();
            out.slowest = out.slowest.max(took);
            match r {
                Ok(true) => out.accepted += 1,
                Ok(false) => out.refused += 1,
                Err(_) => fail(self.name, seed, i, &input, "panicked"),
            }
            if took > self.time_limit {
                fail(self.name, seed, i, &input, &format!("took {took:?}"));
            }
        }
        eprintln!(
            "fuzz {}: {} inputs, {} accepted, {} refused with a clean error, 0 panics, slowest {:?}",
            self.name,
            out.accepted + out.refused,
            out.accepted,
            out.refused,
            out.slowest
        );
        out
    }
}

fn fail(name: &str, seed: u64, i: usize, input: &[u8], what: &str) -> ! {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}-{i}"));
    let _ = std::fs::write(&path, input);
    let shown = String::from_utf8_lossy(&input[..input.len().min(400)]).into_owned();
    panic!(
        "fuzz {name}: input {i} (UNMASK_FUZZ_SEED={seed}) {what}; saved to {}: {shown:?}",
        path.display()
    );
}

fn hash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The files of `tests/corpus/<name>/`: the bad inputs found so far (each one a regression test:
/// it must be refused cleanly) and good ones named `ok-*` (must be accepted).
pub fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Every corpus file gives the outcome its name says (`ok-*` accepted, the rest refused),
/// without a panic.
pub fn check_corpus(name: &str, parse: &mut dyn FnMut(&[u8]) -> bool) -> usize {
    let files = corpus(name);
    assert!(!files.is_empty(), "tests/corpus/{name} is empty");
    for (path, bytes) in &files {
        let good = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ok-");
        let r = catch_unwind(AssertUnwindSafe(|| parse(bytes)));
        match r {
            Ok(accepted) => assert_eq!(
                accepted,
                good,
                "{}: expected {}",
                path.display(),
                if good { "accepted" } else { "a clean error" }
            ),
            Err(_) => panic!("{}: panicked", path.display()),
        }
    }
    files.len()
}
