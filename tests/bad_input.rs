//! Bad input is quarantined with its file, offset and reason; the rest of the
//! job goes on; every record is counted; the exit status says so.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::*;

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The complete lines a gzip reader gets out of a truncated stream before
/// it fails.
fn recoverable_lines(truncated: &[u8]) -> Vec<Vec<u8>> {
    let mut decoder = flate2::read::MultiGzDecoder::new(truncated);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(k) = decoder.read(&mut buf) {
        if k == 0 {
            break;
        }
        out.extend_from_slice(&buf[..k]);
    }
    let complete = out.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    out[..complete]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_inputs(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::write(dir.join("a-good.txt"), "alpha\nbeta\nalpha\n").unwrap();
    let mut long = vec![b'x'; 2000];
    long.extend_from_slice(b"\nshort\n");
    std::fs::write(dir.join("b-long.txt"), &long).unwrap();

    let lines: String = (0..20_000).map(|i| format!("gz-line-{i:06}\n")).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(lines.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let truncated = &gz[..gz.len() / 2];
    std::fs::write(dir.join("c-truncated.gz"), truncated).unwrap();

    let mut zst = vec![0x28, 0xb5, 0x2f, 0xfd];
    zst.extend_from_slice(&[0xee; 64]);
    std::fs::write(dir.join("d-garbage.zst"), zst).unwrap();
    recoverable_lines(truncated)
}

#[test]
fn bad_files_and_records_are_quarantined_and_counted() {
    let (input, data) = (tempdir(), tempdir());
    let recovered = write_inputs(input.path());
    assert!(
        !recovered.is_empty(),
        "the truncated gzip must still yield some lines"
    );
    let missing = input.path().join("missing.txt");
    let not_a_dir = input.path().join("a-good.txt/inside");

    let out = ingest_expecting(
        data.path(),
        &["--max-record", "1K"],
        &[input.path(), &missing, &not_a_dir],
        3,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "missing.txt: cannot read: No such file or directory",
        "inside: cannot read: Not a directory",
        "b-long.txt:0: record of 2000 bytes is longer than --max-record 1024",
        "c-truncated.gz: at byte",
        "gzip data is corrupt or truncated",
        "d-garbage.zst",
        "everything is listed by: quern stats --dataset default --job 1",
    ] {
        assert!(err.contains(needle), "summary lacks {needle:?}:\n{err}");
    }

    // Everything readable was ingested.
    let mut want: Vec<Vec<u8>> = ["alpha", "beta", "short"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    want.extend(recovered.iter().cloned());
    want.sort();
    want.dedup();
    let want: Vec<u8> = want
        .iter()
        .flat_map(|l| [l.as_slice(), b"\n"].concat())
        .collect();
    assert!(
        export(data.path(), "default") == want,
        "export is not the readable records"
    );

    // Every record is accounted for, per file and in total.
    let stats = stats_json(data.path(), "default", None);
    let t = &stats["jobs"][0]["totals"];
    assert_eq!(
        n(&t["read"]),
        n(&t["unique"]) + n(&t["duplicates"]) + n(&t["rejected"])
    );
    assert_eq!(
        n(&t["problem_files"]),
        4,
        "missing, not-a-dir, truncated gzip, garbage zstd"
    );
    let files = stats["files"].as_array().unwrap();
    let file = |suffix: &str| {
        files
            .iter()
            .find(|f| f["path"].as_str().unwrap().ends_with(suffix))
            .unwrap()
    };
    let good = file("a-good.txt");
    assert_eq!(
        (n(&good["read"]), n(&good["unique"]), n(&good["duplicates"])),
        (3, 2, 1)
    );
    let long = file("b-long.txt");
    assert_eq!(
        (n(&long["read"]), n(&long["rejected"]), n(&long["unique"])),
        (2, 1, 1)
    );
    let gz = file("c-truncated.gz");
    assert_eq!(n(&gz["unique"]), recovered.len() as u64);
    assert_eq!(
        n(&gz["rejected"]),
        n(&gz["read"]) - recovered.len() as u64,
        "only the cut-off fragment is rejected"
    );
    assert!(
        gz["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("gzip data is corrupt or truncated")
    );
    assert!(
        file("missing.txt")["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("No such file")
    );
    let rejected = stats["rejected"].as_array().unwrap();
    assert!(
        rejected
            .iter()
            .any(|r| r["reason"] == "too_long" && n(&r["len"]) == 2000 && n(&r["offset"]) == 0)
    );
}

#[test]
fn tsv_records_without_the_key_field_are_rejected() {
    let (input, data) = (tempdir(), tempdir());
    std::fs::write(input.path().join("t.tsv"), "a\tb\tc\nonly\ttwo\nx\ty\tz\n").unwrap();
    let out = ingest_expecting(
        data.path(),
        &["--format", "tsv", "--key-field", "3"],
        &[input.path()],
        3,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "t.tsv:6: record has 2 tab-separated field(s); --key-field 3 needs at least 3"
        ),
        "{err}"
    );
    assert_eq!(export(data.path(), "default"), b"a\tb\tc\nx\ty\tz\n");
}

#[test]
fn bad_settings_are_refused_before_anything_runs() {
    let data = tempdir();
    let out = ingest_expecting(data.path(), &["--memory", "1M"], &[data.path()], 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory 1048576 is below the minimum"));
    let out = ingest_expecting(data.path(), &["--memory", "12Q"], &[data.path()], 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown size unit"));
}

#[test]
fn the_configuration_file_gives_defaults_that_env_and_flags_override() {
    let data = tempdir();
    let input = data.path().join("in.txt");
    std::fs::write(&input, "b\na\nb\n").unwrap();
    let config = data.path().join("quern.toml");
    std::fs::write(&config, "[ingest]\nmemory = \"1MiB\"\n").unwrap();
    let ingest_with = |env: Option<&str>, flags: &[&str], status: i32| {
        let mut cmd = quern(&data.path().join("store"));
        cmd.arg("--config")
            .arg(&config)
            .arg("ingest")
            .arg("--no-progress");
        if let Some(memory) = env {
            cmd.env("QUERN_MEMORY", memory);
        }
        run(cmd.args(flags).arg(&input), status)
    };
    // The file's value replaces the default: 1 MiB is refused by name.
    let out = ingest_with(None, &[], 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory 1048576 is below the minimum"));
    // The environment overrides the file, and a flag overrides both.
    ingest_with(Some("64M"), &[], 0);
    ingest_with(Some("1M"), &["--memory", "64M"], 0);
    assert_eq!(export(&data.path().join("store"), "default"), b"a\nb\n");

    std::fs::write(&config, "[ingest]\nmemroy = \"64M\"\n").unwrap();
    let out = ingest_with(None, &[], 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field `memroy`") && err.contains("quern.toml"),
        "{err}"
    );
}

#[test]
fn bad_standard_input_is_named_dash() {
    let (cwd, data) = (tempdir(), tempdir());
    let lines: String = (0..20_000).map(|i| format!("piped-{i:06}\n")).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(lines.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let truncated = gz[..gz.len() / 2].to_vec();
    let recovered = recoverable_lines(&truncated);

    let out = ingest_piped(data.path(), cwd.path(), &["-"], truncated, 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("problem: -: at byte") && err.contains("gzip data is corrupt or truncated"),
        "{err}"
    );
    let want: Vec<u8> = recovered
        .iter()
        .flat_map(|l| [l, &b"\n"[..]].concat())
        .collect();
    assert!(
        export(data.path(), "default") == want,
        "export is not the readable records"
    );
    let stats = stats_json(data.path(), "default", None);
    let piped = &stats["files"][0];
    assert_eq!(piped["path"], "-");
    assert_eq!(n(&piped["unique"]), recovered.len() as u64);
    assert_eq!(
        n(&piped["read"]),
        n(&piped["unique"]) + n(&piped["rejected"]),
        "{piped}"
    );
}

/// With a warning to log (a missing path): plain text when stderr is a
/// pipe; colour on a terminal (script(1), from util-linux, gives the
/// command one), unless `NO_COLOR` is set.
#[test]
fn log_lines_carry_colour_only_on_a_terminal() {
    let data = tempdir();
    let missing = data.path().join("missing.txt");
    let out = ingest_expecting(data.path(), &[], &[&missing], 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARN") && err.contains("missing.txt"), "{err}");
    assert!(!err.contains("\x1b["), "{err:?}");

    let on_terminal = |no_color: Option<&str>| {
        let line = format!(
            "'{}' --data '{}' ingest --no-progress '{}'",
            env!("CARGO_BIN_EXE_quern"),
            data.path().display(),
            missing.display()
        );
        let mut cmd = std::process::Command::new("script");
        isolate(&mut cmd);
        cmd.args(["-qec", &line, "/dev/null"])
            .stdin(std::process::Stdio::null());
        match no_color {
            Some(value) => cmd.env("NO_COLOR", value),
            None => cmd.env_remove("NO_COLOR"),
        };
        String::from_utf8_lossy(&run(&mut cmd, 3).stdout).into_owned()
    };
    let coloured = on_terminal(None);
    assert!(
        coloured.contains("missing.txt") && coloured.contains("\x1b["),
        "{coloured:?}"
    );
    let plain = on_terminal(Some("1"));
    assert!(
        plain.contains("missing.txt") && !plain.contains("\x1b["),
        "{plain:?}"
    );
}
