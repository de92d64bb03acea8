//! The cpu backend's worker threads: made once, they spin for a while after each loop before
//! they sleep. A window step of the tiny model runs 46 ops in about 2.4 ms (`bench --profile`), and
//! waking a sleeping thread (a futex, an inter-processor interrupt, on a VM an exit to the
//! host) cost more than many of those loops gained: with rayon's pool, which puts idle workers
//! to sleep and has the caller sleep while the pool runs its loop, two threads were slower
//! than one on the tiny model's window step (docs/performance.md).
//!
//! One loop at a time: `run(count, f)` publishes `f` with a ticket (epoch, count, next index)
//! in one atomic word; the caller and the workers claim indices by compare-and-swap on it, and
//! the caller waits (spinning: the chunks in flight are short) until every claimed index is
//! done. Only a claim that succeeds dereferences the job, and it can only succeed while the
//! job's epoch is current and unfinished, that is while the caller is inside `run` and the
//! job alive on its stack. A second caller while a loop runs (another thread), or a loop
//! started inside a chunk, runs on its own thread, sequentially.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Threads at most (the caller and `MAX_THREADS - 1` workers); chunk counts fit the ticket.
pub const MAX_THREADS: usize = 1024;

/// How long an idle worker spins for the next loop before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// Index and count bits of the ticket; the epoch is above them.
const INDEX_BITS: u32 = 16;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// The loop being run: its body, referenced from the caller's stack.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

struct Shared {
    /// `epoch << 32 | count << 16 | next index`.
    ticket: AtomicU64,
    /// The current epoch's job (a `*const Job` on the caller's stack).
    job: AtomicPtr<()>,
    /// Chunks of the current epoch finished.
    done: AtomicUsize,
    /// What a chunk of the current epoch panicked with (the caller re-raises it).
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Workers asleep, and what wakes them.
    sleepers: Mutex<usize>,
    wake: Condvar,
    /// Held by the thread whose loop is running.
    caller: Mutex<()>,
}

thread_local! {
    /// This thread is a worker, or is inside a chunk: loops it starts run sequentially.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

fn epoch(ticket: u64) -> u64 {
    ticket >> 32
}

fn shared() -> &'static Shared {
    static POOL: OnceLock<&'static Shared> = OnceLock::new();
    POOL.get_or_init(|| {
        let s: &'static Shared = Box::leak(Box::new(Shared {
            ticket: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            caller: Mutex::new(()),
        }));
        for i in 1..super::parallel::threads() {
            // A worker that cannot be made leaves its share to the others and the caller.
            let _ = std::thread::Builder::new()
                .name(format!("unmask-cpu-{i}"))
                .spawn(move || worker(s));
        }
        s
    })
}

/// Runs `f(0)`, ..., `f(count - 1)` over the caller and the workers; returns when all have run.
/// A panic in `f` is raised again here, after the other indices have run.
pub fn run(count: usize, f: &(dyn Fn(usize) + Sync)) {
    // On this thread alone, with the same contract: every index runs, a panic comes after.
    let sequential = || {
        let mut failed = None;
        for i in 0..count {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(i))) {
                failed.get_or_insert(payload);
            }
        }
        if let Some(payload) = failed {
            resume_unwind(payload);
        }
    };
    if count <= 1 || count as u64 > INDEX_MASK || BUSY.with(Cell::get) {
        return sequential();
    }
    let s = shared();
    let _guard = match s.caller.try_lock() {
        Ok(g) => g,
        // A chunk's panic went through an earlier caller; the pool itself is sound.
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return sequential(),
    };
    let job = Job { f };
    s.done.store(0, Ordering::Relaxed);
    s.job
        .store(&job as *const Job as *mut (), Ordering::Relaxed);
    // 32 bits of epoch, wrapping: a claim needs the same epoch and index at its load and
    // its compare-and-swap, which 2^32 loops in between would take to fool.
    let e = (epoch(s.ticket.load(Ordering::Relaxed)) + 1) & 0xffff_ffff;
    // Release: a worker that sees this epoch sees the job and the reset count.
    s.ticket
        .store(e << 32 | (count as u64) << INDEX_BITS, Ordering::Release);
    {
        let sleepers = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
        if *sleepers > 0 {
            s.wake.notify_all();
        }
    }
    BUSY.with(|b| b.set(true));
    help(s, e);
    BUSY.with(|b| b.set(false));
    // Chunks other threads claimed may still be running: the job must outlive them.
    let mut spins = 0u32;
    while s.done.load(Ordering::Acquire) < count {
        // A worker preempted mid-chunk (more runnable threads than cores) needs the core.
        spins += 1;
        if spins.is_multiple_of(256) {
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
    let payload = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(payload) = payload {
        resume_unwind(payload);
    }
}

/// Claims and runs indices of epoch `e` until none are left.
fn help(s: &Shared, e: u64) {
    loop {
        let t = s.ticket.load(Ordering::Acquire);
        let (index, count) = (t & INDEX_MASK, (t >> INDEX_BITS) & INDEX_MASK);
        if epoch(t) != e || index >= count {
            return;
        }
        let job = s.job.load(Ordering::Acquire) as *const Job;
        if s.ticket
            .compare_exchange_weak(t, t + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // SAFETY: the claim succeeded, so epoch `e` was current with index `index` unclaimed
        // from our load of the ticket to the claim: its caller is still in `run`, waiting
        // for this index, and `job` (read after that epoch was published) is its live job.
        let f = unsafe { (*job).f };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(index as usize))) {
            s.panic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(payload);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

fn worker(s: &'static Shared) {
    BUSY.with(|b| b.set(true));
    let mut seen = epoch(s.ticket.load(Ordering::Acquire));
    loop {
        seen = next_epoch(s, seen);
        help(s, seen);
    }
}

/// Waits for an epoch after `seen`: spinning for [`SPIN`], then asleep until `run` wakes it.
fn next_epoch(s: &Shared, seen: u64) -> u64 {
    let since = Instant::now();
    loop {
        for _ in 0..256 {
            let e = epoch(s.ticket.load(Ordering::Acquire));
            if e != seen {
                return e;
            }
            std::hint::spin_loop();
        }
        if since.elapsed() >= SPIN {
            break;
        }
        // Spinning, but not in the way of threads that have work (tests, other processes).
        std::thread::yield_now();
    }
    let mut sleepers = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
    *sleepers += 1;
    // Checked under the lock `run` takes after publishing: no wake-up is lost.
    loop {
        let e = epoch(s.ticket.load(Ordering::Acquire));
        if e != seen {
            *sleepers -= 1;
            return e;
        }
        sleepers = s.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_from_many_callers() {
        let threads: Vec<_> = (0..4)
            .map(|c| {
                std::thread::spawn(move || {
                    for round in 0..200 {
                        let count = 1 + (round + c) % 9;
                        let hits: Vec<AtomicUsize> =
                            (0..count).map(|_| AtomicUsize::new(0)).collect();
                        run(count, &|i| {
                            // A loop inside a chunk runs where it is.
                            run(2, &|_| ());
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_chunk_is_raised_in_the_caller_after_the_others_ran() {
        let hits = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(8, &|i| {
                hits.fetch_add(1, Ordering::Relaxed);
                if i == 3 {
                    // An unwind without the panic hook: a printed panic holds stderr's lock,
                    // which a sandbox test forking at that moment would inherit held.
                    resume_unwind(Box::new("chunk 3 fails"));
                }
            })
        }));
        assert!(r.is_err());
        assert_eq!(hits.load(Ordering::Relaxed), 8);
        // The pool still works.
        let n = AtomicUsize::new(0);
        run(5, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 5);
    }
}
