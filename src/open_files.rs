//! The process's limit on open files, raised to what the system allows.
//!
//! A lane's final merge holds one file per open run (`--max-open-runs`,
//! 128 by default) and a node runs a lane per core: 16 cores want 2,048
//! descriptors besides RocksDB's, where a login shell's soft limit is
//! often 1,024. The hard limit is the administrator's; the soft one is
//! only a default, which servers raise for themselves.

/// Raises the soft limit on open files to the hard limit. A failure only
/// leaves the limit as it was: a merge that then runs out of descriptors
/// fails naming its run file.
pub fn raise_to_hard_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct
    // passed, which lives on this stack frame for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
