//! Log lines, as collectors ship them:
//! `2026-12-06T04:55:12.123456Z host-07 nginx[8231]: GET /api/v1/items/83721 200 1532 12ms "Mozilla/5.0 ..."`.
//!
//! Each file is one collector's log over the same period, starting at
//! [`START_US`]: timestamps grow through the file (~4 lines a second),
//! so neighbouring lines share their first 15-20 bytes. Hosts, services,
//! message templates and their fields follow Zipf popularity.
//!
//! A duplicate is an event delivered twice. Each event gets another copy
//! with probability `duplicate_ratio` (repeatedly, so a share
//! `duplicate_ratio` of all lines are copies). To keep timestamps
//! non-decreasing within a file, a copy goes either right after its
//! original (a retried send) or into the next file at its own timestamp
//! (the same event picked up by the next collector too); the second kind
//! waits in a bounded buffer, and goes right after the original when the
//! buffer is full or there is no next file.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::mem;
use std::ops::Range;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::invalid_input;
use super::shaped::{Records, ShapeSpec};
use super::sink::LineWriter;
use super::vocab::{Vocabulary, Zipf};

/// 2026-12-06T00:00:00Z in microseconds since the Unix epoch.
pub(crate) const START_US: u64 = 1_796_515_200_000_000;
/// Mean time between two events of one collector.
const MEAN_STEP_US: u64 = 250_000;
/// Copies waiting for the next file, at most.
const CARRY_BYTES: usize = 16 << 20;

const HOSTS: usize = 64;
const SERVICES: &[&str] = &["nginx", "api", "postgres", "sshd", "CRON"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH"];
const ENDPOINTS: &[&str] = &[
    "/api/v1/items",
    "/api/v1/users",
    "/",
    "/static/app.js",
    "/api/v1/search",
    "/health",
    "/login",
    "/api/v2/orders",
    "/favicon.ico",
    "/api/v1/carts",
    "/images/logo.png",
];
const STATUSES: &[&str] = &[
    "200", "304", "404", "301", "201", "500", "403", "502", "401", "204",
];
const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "curl/8.5.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
    "python-requests/2.32.3",
    "Prometheus/2.55.1",
];
const LEVELS: &[&str] = &["info", "debug", "warn", "error"];
const MESSAGES: &[&str] = &[
    "request handled",
    "cache miss",
    "db query",
    "job queued",
    "retrying upstream",
    "token refreshed",
    "validation failed",
    "upstream timeout",
];
const TABLES: &[&str] = &[
    "users", "orders", "items", "sessions", "events", "payments", "carts",
];
const STATEMENTS: &[&str] = &["SELECT * FROM ", "UPDATE ", "DELETE FROM "];
const SSH_EVENTS: &[&str] = &[
    "Accepted publickey for ",
    "Connection closed by ",
    "Failed password for invalid user ",
    "Disconnected from user ",
];
const CRON_COMMANDS: &[&str] = &[
    "run-parts /etc/cron.hourly",
    "/usr/local/bin/backup.sh --full",
    "/usr/bin/certbot renew -q",
    "php /var/www/app/cron.php",
];
const USERS: usize = 10_000;
const COMMON_USERS: &[&str] = &[
    "root", "deploy", "admin", "ubuntu", "git", "postgres", "www-data",
];

/// Lines kept for another file, oldest first, within [`CARRY_BYTES`].
#[derive(Default)]
struct Carry {
    lines: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
}

impl Carry {
    fn try_push(&mut self, timestamp: u64, line: &[u8]) -> bool {
        if self.bytes + line.len() > CARRY_BYTES {
            return false;
        }
        self.bytes += line.len();
        self.lines.push_back((timestamp, line.to_vec()));
        true
    }

    /// Writes the lines stamped at or before `until`, in order.
    fn write_until(&mut self, until: u64, out: &mut LineWriter) -> io::Result<()> {
        while self.lines.front().is_some_and(|(t, _)| *t <= until) {
            let (_, line) = self.lines.pop_front().expect("front exists");
            self.bytes -= line.len();
            out.write_line(&line)?;
        }
        Ok(())
    }
}

pub(crate) struct Logs {
    rng: ChaCha8Rng,
    duplicate_ratio: f64,
    /// The current file's clock: the last event's timestamp.
    clock: u64,
    has_next_file: bool,
    /// Copies of the previous file's events, merged into this file.
    incoming: Carry,
    /// Copies of this file's events, for the next file.
    outgoing: Carry,
    hosts: Zipf,
    services: Vocabulary,
    methods: Vocabulary,
    endpoints: Vocabulary,
    statuses: Vocabulary,
    user_agents: Vocabulary,
    levels: Vocabulary,
    messages: Vocabulary,
    tables: Vocabulary,
    statements: Vocabulary,
    ssh_events: Vocabulary,
    cron_commands: Vocabulary,
    users: Vocabulary,
    /// `YYYY-MM-DDTHH:MM:SS` of `stamp_second`, reused while it holds.
    stamp: Vec<u8>,
    stamp_second: Option<u64>,
    line: Vec<u8>,
}

impl Logs {
    pub(crate) fn new(rng: ChaCha8Rng, spec: &ShapeSpec) -> io::Result<Self> {
        // Every event's copies are drawn until a draw fails: a ratio of 1
        // would never stop.
        if spec.duplicate_ratio >= 1.0 {
            return Err(invalid_input(format!(
                "a log dataset's duplicate ratio must be below 1, got {}",
                spec.duplicate_ratio
            )));
        }
        Ok(Self {
            rng,
            duplicate_ratio: spec.duplicate_ratio,
            clock: START_US,
            has_next_file: false,
            incoming: Carry::default(),
            outgoing: Carry::default(),
            hosts: Zipf::new(HOSTS),
            services: Vocabulary::of(SERVICES),
            methods: Vocabulary::of(METHODS),
            endpoints: Vocabulary::of(ENDPOINTS),
            statuses: Vocabulary::of(STATUSES),
            user_agents: Vocabulary::of(USER_AGENTS),
            levels: Vocabulary::of(LEVELS),
            messages: Vocabulary::of(MESSAGES),
            tables: Vocabulary::of(TABLES),
            statements: Vocabulary::of(STATEMENTS),
            ssh_events: Vocabulary::of(SSH_EVENTS),
            cron_commands: Vocabulary::of(CRON_COMMANDS),
            users: Vocabulary::new(COMMON_USERS, USERS),
            stamp: Vec::with_capacity(19),
            stamp_second: None,
            line: Vec::with_capacity(512),
        })
    }

    /// Builds the line of a fresh event at the current clock.
    fn fresh(&mut self) {
        let rng = &mut self.rng;
        let line = &mut self.line;
        line.clear();
        let second = self.clock / 1_000_000;
        if self.stamp_second != Some(second) {
            self.stamp.clear();
            push_date_time(second, &mut self.stamp);
            self.stamp_second = Some(second);
        }
        line.extend_from_slice(&self.stamp);
        let host = self.hosts.sample(rng);
        let service = self.services.rank(rng);
        // A daemon keeps its pid on a host; cron runs a new process each time.
        let pid = match SERVICES[service] {
            "CRON" => rng.random_range(1_000..60_000),
            _ => 1_000 + (host * 7_919 + service * 104_729) % 59_000,
        };
        write!(
            line,
            ".{:06}Z host-{host:02} {}[{pid}]: ",
            self.clock % 1_000_000,
            SERVICES[service]
        )
        .unwrap();
        match SERVICES[service] {
            "nginx" => {
                self.methods.push(rng, line);
                line.push(b' ');
                let endpoint = self.endpoints.common_word(rng);
                line.extend_from_slice(endpoint.as_bytes());
                if endpoint.starts_with("/api/") {
                    write!(line, "/{}", rng.random_range(1..100_000u32)).unwrap();
                }
                line.push(b' ');
                self.statuses.push(rng, line);
                let size = spread(rng, 4..20);
                let millis = spread(rng, 1..12);
                write!(line, " {size} {millis}ms \"").unwrap();
                self.user_agents.push(rng, line);
                line.push(b'"');
            }
            "api" => {
                line.extend_from_slice(b"level=");
                self.levels.push(rng, line);
                line.extend_from_slice(b" msg=\"");
                self.messages.push(rng, line);
                let request: u64 = rng.random();
                write!(line, "\" request_id={request:016x} user=").unwrap();
                self.users.push(rng, line);
                write!(line, " duration_ms={}", rng.random_range(0..2_000u32)).unwrap();
            }
            "postgres" => {
                let micros = spread(rng, 8..24);
                write!(
                    line,
                    "LOG:  duration: {}.{:03} ms  statement: ",
                    micros / 1_000,
                    micros % 1_000
                )
                .unwrap();
                let statement = self.statements.common_word(rng);
                line.extend_from_slice(statement.as_bytes());
                self.tables.push(rng, line);
                if statement == "UPDATE " {
                    line.extend_from_slice(b" SET updated_at = now()");
                }
                write!(line, " WHERE id = {}", rng.random_range(1..10_000_000u32)).unwrap();
            }
            "sshd" => {
                let event = self.ssh_events.common_word(rng);
                line.extend_from_slice(event.as_bytes());
                if event.ends_with("user ") || event.ends_with("for ") {
                    self.users.push(rng, line);
                    line.extend_from_slice(b" from ");
                }
                let ip: [u8; 3] = rng.random();
                let port = rng.random_range(1_024..65_536u32);
                write!(line, "10.{}.{}.{} port {port}", ip[0], ip[1], ip[2]).unwrap();
                line.extend_from_slice(if event.starts_with("Connection") {
                    b" [preauth]"
                } else {
                    b" ssh2"
                });
            }
            _ => {
                line.push(b'(');
                self.users.push(rng, line);
                line.extend_from_slice(b") CMD (");
                self.cron_commands.push(rng, line);
                line.push(b')');
            }
        }
    }
}

impl Records for Logs {
    fn begin_file(&mut self, index: usize, files: usize) {
        self.clock = START_US;
        self.has_next_file = index + 1 < files;
        self.incoming = mem::take(&mut self.outgoing);
    }

    fn emit(&mut self, out: &mut LineWriter) -> io::Result<()> {
        self.clock += self.rng.random_range(1..2 * MEAN_STEP_US);
        self.incoming.write_until(self.clock, out)?;
        self.fresh();
        out.write_line(&self.line)?;
        while self.rng.random_bool(self.duplicate_ratio) {
            let carried = self.has_next_file
                && self.rng.random_bool(0.5)
                && self.outgoing.try_push(self.clock, &self.line);
            if !carried {
                out.write_line(&self.line)?;
            }
        }
        Ok(())
    }

    fn end_file(&mut self, out: &mut LineWriter) -> io::Result<()> {
        self.incoming.write_until(u64::MAX, out)
    }
}

/// A number below `2^bits` for `bits` drawn from `bits`: sizes and
/// durations spread over orders of magnitude, as real ones are.
fn spread(rng: &mut ChaCha8Rng, bits: Range<u32>) -> u32 {
    let bits = rng.random_range(bits);
    rng.random_range(0..1 << bits)
}

/// Appends `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time in seconds.
fn push_date_time(unix_seconds: u64, buf: &mut Vec<u8>) {
    let (days, second_of_day) = (unix_seconds / 86_400, unix_seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    write!(
        buf,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3_600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
    .unwrap();
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datagen::shaped::testing::*;
    use crate::datagen::shaped::{Shape, write_shape_dataset};

    #[test]
    fn same_spec_gives_same_bytes() {
        assert_deterministic(Shape::Logs);
    }

    #[test]
    fn duplicates_as_asked() {
        assert_duplicates_as_asked(Shape::Logs);
    }

    #[test]
    fn formats_dates_across_month_year_and_leap_days() {
        let at = |seconds| {
            let mut buf = Vec::new();
            push_date_time(seconds, &mut buf);
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(at(0), "1970-01-01T00:00:00");
        assert_eq!(at(START_US / 1_000_000), "2026-12-06T00:00:00");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59");
        assert_eq!(at(1_735_689_599), "2024-12-31T23:59:59");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00");
    }

    /// Timestamps never go back within a file, and neighbouring lines
    /// share a long prefix; every service shows up.
    #[test]
    fn timestamps_grow_through_each_file() {
        let files = generate(&spec(Shape::Logs));
        for file in &files {
            let stamps: Vec<&[u8]> = file.iter().map(|l| &l[..27]).collect();
            for stamp in &stamps {
                let text = std::str::from_utf8(stamp).unwrap();
                assert!(
                    text.starts_with("2026-12-0")
                        && text.ends_with('Z')
                        && text.as_bytes()[19] == b'.',
                    "{text}"
                );
            }
            // Fixed-width ISO 8601: bytewise order is time order.
            assert!(stamps.windows(2).all(|w| w[0] <= w[1]));
            // Over distinct neighbours: a repeated line shares all of itself.
            let shared: Vec<usize> = file
                .windows(2)
                .filter(|w| w[0] != w[1])
                .map(|w| w[0].iter().zip(&w[1]).take_while(|(a, b)| a == b).count())
                .collect();
            let mean = shared.iter().sum::<usize>() as f64 / shared.len() as f64;
            assert!((15.0..=20.0).contains(&mean), "neighbours share {mean}");
        }
        for service in SERVICES {
            let tag = format!(" {service}[");
            assert!(
                files
                    .iter()
                    .flatten()
                    .any(|l| l.windows(tag.len()).any(|w| w == tag.as_bytes())),
                "{service}"
            );
        }
    }

    #[test]
    fn rejects_a_ratio_of_one() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ShapeSpec {
            duplicate_ratio: 1.0,
            ..ShapeSpec::sample(Shape::Logs)
        };
        let err = write_shape_dataset(dir.path(), &spec).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
