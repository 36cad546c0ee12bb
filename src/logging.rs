//! Log lines to stderr that do not tear through the progress bar, in
//! colour only for a person at a terminal.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Where log lines go: straight to stderr, or above the progress bar while
/// one is shown.
#[derive(Clone, Default)]
pub struct LogTarget(Arc<Mutex<Option<ProgressBar>>>);

impl LogTarget {
    pub fn show_above(&self, bar: Option<ProgressBar>) {
        *self.0.lock().expect("log target lock") = bar;
    }
}

/// Buffers one log event and writes it whole when dropped.
pub struct LogLine {
    target: LogTarget,
    line: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().write_all(&self.line);
        };
        match &*self.target.0.lock().expect("log target lock") {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogTarget {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            target: self.clone(),
            line: Vec::new(),
        }
    }
}

/// Warnings by default; `-v` info, `-vv` debug; `RUST_LOG` overrides.
pub fn init(verbose: u8) -> LogTarget {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let target = LogTarget::default();
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(target.clone())
        .with_target(false)
        .with_ansi(colour)
        .init();
    target
}

/// Colour escapes would litter a redirected log; `NO_COLOR` set to
/// anything but the empty string turns them off (no-color.org).
fn use_colour(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
    }
}
