//! The process's resident memory as the kernel splits it. `ps` shows their
//! sum; the number that matters for a memory budget is anonymous memory
//! (heap, stacks), not file-backed pages (mmap, page cache) the kernel can
//! drop at will.

/// Resident set, in bytes, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    /// Peak total resident set (`VmHWM`).
    pub peak: u64,
}

impl ProcessMemory {
    /// `None` where `/proc` is unavailable.
    pub fn read() -> Option<Self> {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .map(|s| Self::parse(&s))
    }

    fn parse(status: &str) -> Self {
        let mut memory = Self::default();
        for line in status.lines() {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let field = match name {
                "RssAnon" => &mut memory.anon,
                "RssFile" => &mut memory.file,
                "RssShmem" => &mut memory.shmem,
                "VmHWM" => &mut memory.peak,
                _ => continue,
            };
            let kib = rest.trim().trim_end_matches("kB").trim();
            *field = kib.parse::<u64>().unwrap_or(0) * 1024;
        }
        memory
    }

    pub fn resident(&self) -> u64 {
        self.anon + self.file + self.shmem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_format() {
        let status = "Name:\tquern\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nRssAnon:\t   81920 kB\nRssFile:\t   20000 kB\nRssShmem:\t     480 kB\n";
        let m = ProcessMemory::parse(status);
        assert_eq!(
            m,
            ProcessMemory {
                anon: 81920 * 1024,
                file: 20000 * 1024,
                shmem: 480 * 1024,
                peak: 204800 * 1024
            }
        );
        assert_eq!(m.resident(), 102400 * 1024);
    }

    #[test]
    fn reads_this_process() {
        let m = ProcessMemory::read().unwrap();
        assert!(m.anon > 0 && m.peak >= m.resident());
    }
}
