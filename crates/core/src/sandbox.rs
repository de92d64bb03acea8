//! Running one computation in a forked child process with its own memory and time limits, for
//! work whose memory cannot be bounded from inside: a model's chat template (minijinja has no
//! allocation hook, and a template that doubles a string 32 times inside `{% set %}` asks for
//! 4 GiB, which would abort the whole process).
//!
//! The child shares the parent's memory copy-on-write (the model's weights are mapped, not
//! copied), runs only the closure, sends its bytes back through a pipe and `_exit`s without
//! running any destructor. When it hits its address-space limit the failed allocation aborts the
//! child, not the caller: the caller gets [`Outcome::OutOfMemory`]. The parent kills it when the
//! caller cancels or the time runs out. Linux only (it reads `/proc/self/status`); elsewhere
//! [`isolated`] says [`Outcome::Unavailable`] and callers run the work in-process.

use crate::chat::Cancel;
use std::time::Duration;
#[cfg(target_os = "linux")]
use std::time::Instant;

pub enum Outcome {
    /// What the closure returned.
    Done(Result<Vec<u8>, String>),
    /// The child died: its memory limit was hit (or it crashed).
    OutOfMemory,
    TimedOut,
    Cancelled,
    /// No child could be made here (not Linux, or `fork` refused): run the work in-process.
    Unavailable,
}

/// Runs `f` in a child process that may map at most `memory` bytes more than this process has
/// now, for at most `time`. `f`'s output is bounded by `max_output` bytes (the child is killed
/// past it).
#[cfg(target_os = "linux")]
pub fn isolated(
    memory: u64,
    time: Duration,
    max_output: usize,
    cancel: &Cancel,
    f: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Outcome {
    let Some(mapped) = vm_size() else {
        return Outcome::Unavailable;
    };
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-int array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Outcome::Unavailable;
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: the child only runs `f` and async-signal-tolerant calls before `_exit` (the
    // allocator is fork-safe: glibc's malloc locks its arenas around fork).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        close(read_end);
        close(write_end);
        return Outcome::Unavailable;
    }
    if pid == 0 {
        close(read_end);
        child(write_end, mapped.saturating_add(memory), f);
    }
    close(write_end);
    let outcome = collect(pid, read_end, time, max_output, cancel);
    close(read_end);
    outcome
}

#[cfg(not(target_os = "linux"))]
pub fn isolated(
    _memory: u64,
    _time: Duration,
    _max_output: usize,
    _cancel: &Cancel,
    _f: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Outcome {
    Outcome::Unavailable
}

/// The child's whole life: limit, run, report, exit.
#[cfg(target_os = "linux")]
fn child(out: i32, address_space: u64, f: impl FnOnce() -> Result<Vec<u8>, String>) -> ! {
    // SAFETY: plain syscalls on valid arguments; `_exit` never returns.
    unsafe {
        // Every other descriptor closed: a pipe of another render forked at the same moment
        // must not stay open in this child (its reader would wait for this child's exit).
        let fd = out as libc::c_long;
        if fd > 3 {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_long,
                fd - 1,
                0 as libc::c_long,
            );
        }
        libc::syscall(
            libc::SYS_close_range,
            fd + 1,
            !0u32 as libc::c_long,
            0 as libc::c_long,
        );
        // An allocation failure prints a line before aborting: keep it out of the parent's log.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 2);
        }
        let limit = libc::rlimit {
            rlim_cur: address_space,
            rlim_max: address_space,
        };
        if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
            libc::_exit(3);
        }
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("the template renderer panicked".into()));
    let (tag, payload) = match r {
        Ok(b) => (0u8, b),
        Err(m) => (1u8, m.into_bytes()),
    };
    let ok = write_all(out, &[tag]) && write_all(out, &payload);
    // SAFETY: ends the child without running the parent's destructors or atexit handlers.
    unsafe { libc::_exit(if ok { 0 } else { 4 }) }
}

/// Reads the child's answer, killing it on cancellation, on the deadline or past `max_output`.
#[cfg(target_os = "linux")]
fn collect(pid: i32, from: i32, time: Duration, max_output: usize, cancel: &Cancel) -> Outcome {
    let deadline = Instant::now() + time;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let stop = |why: Outcome| {
        // SAFETY: `pid` is our child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reap(pid);
        why
    };
    loop {
        if cancel.is_set() {
            return stop(Outcome::Cancelled);
        }
        if Instant::now() >= deadline {
            return stop(Outcome::TimedOut);
        }
        let mut p = libc::pollfd {
            fd: from,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. Short waits so cancellation is seen within 20 ms.
        let ready = unsafe { libc::poll(&mut p, 1, 20) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return stop(Outcome::OutOfMemory);
        }
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
        if got.len() > max_output + 1 {
            return stop(Outcome::Done(Err(format!(
                "the rendered prompt is longer than {max_output} bytes"
            ))));
        }
    }
    let exited_cleanly = reap(pid);
    match got.split_first() {
        Some((0, rest)) if exited_cleanly => Outcome::Done(Ok(rest.to_vec())),
        Some((1, rest)) if exited_cleanly => {
            Outcome::Done(Err(String::from_utf8_lossy(rest).into_owned()))
        }
        _ => Outcome::OutOfMemory,
    }
}

/// Waits for the child; true when it exited with status 0.
#[cfg(target_os = "linux")]
fn reap(pid: i32) -> bool {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Reaped elsewhere (SIGCHLD ignored): trust the answer's completeness instead.
            return true;
        }
    }
}

#[cfg(target_os = "linux")]
fn write_all(fd: i32, mut b: &[u8]) -> bool {
    while !b.is_empty() {
        // SAFETY: `b` is readable for its length.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        b = &b[n as usize..];
    }
    true
}

#[cfg(target_os = "linux")]
fn close(fd: i32) {
    // SAFETY: closes a descriptor this module opened.
    unsafe { libc::close(fd) };
}

/// This process's mapped address space (`VmSize`), the base the child's limit adds to.
#[cfg(target_os = "linux")]
fn vm_size() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn results_and_errors_come_back() {
        let c = Cancel::default();
        let t = Duration::from_secs(10);
        match isolated(GIB, t, 1 << 20, &c, || Ok(b"hello".to_vec())) {
            Outcome::Done(Ok(b)) => assert_eq!(b, b"hello"),
            _ => panic!("no answer"),
        }
        match isolated(GIB, t, 1 << 20, &c, || Err("bad".into())) {
            Outcome::Done(Err(m)) => assert_eq!(m, "bad"),
            _ => panic!("no error"),
        }
    }

    #[test]
    fn a_child_over_its_memory_dies_alone() {
        let c = Cancel::default();
        let r = isolated(256 << 20, Duration::from_secs(30), 1 << 20, &c, || {
            let mut s = String::from("ab");
            for _ in 0..40 {
                s = format!("{s}{s}");
            }
            Ok(s.len().to_le_bytes().to_vec())
        });
        assert!(matches!(r, Outcome::OutOfMemory));
    }

    #[test]
    fn cancel_and_deadline_kill_the_child() {
        let spin = || loop {
            std::hint::spin_loop();
        };
        let t = Instant::now();
        let r = isolated(
            GIB,
            Duration::from_millis(200),
            1 << 20,
            &Cancel::default(),
            spin,
        );
        assert!(matches!(r, Outcome::TimedOut));
        let c = Cancel::default();
        let setter = {
            let c = c.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                c.set();
            })
        };
        let r = isolated(GIB, Duration::from_secs(30), 1 << 20, &c, spin);
        setter.join().unwrap();
        assert!(matches!(r, Outcome::Cancelled));
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
