//! Free space on the disk that holds the cache, so a download that cannot fit is refused before
//! it starts rather than failing at 90 %.

use std::path::Path;

/// Bytes an unprivileged writer may still use on `dir`'s file system (`None` if unknown).
#[cfg(unix)]
pub fn available(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a statvfs buffer statvfs fills on success.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it wrote the struct.
    let st = unsafe { st.assume_init() };
    // The fields are u32 on some platforms, u64 on others.
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(not(unix))]
pub fn available(_dir: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_temp_disk_has_some_room() {
        let free = super::available(&std::env::temp_dir()).unwrap();
        assert!(free > 0);
        assert_eq!(super::available(std::path::Path::new("/no/such/dir")), None);
    }
}
