//! `quern cert init` and `quern cert issue`: the cluster CA and the
//! certificates of nodes, coordinators and clients, as PEM files; the
//! name issued is the holder's role (`coord-N`, `node-N`, or an operator),
//! which `issue` prints. Private
//! keys are written with mode 0600; files are created with `O_EXCL`, never
//! through a symbolic link, and nothing existing is replaced without
//! `--force`. The work is `proto_schema::ca`'s; this writes files.

use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use proto_schema::ca::{ClusterCa, IssuedCert};
use proto_schema::cert_role::Role;
use proto_schema::tls::{CA_CERT_FILE, CA_KEY_FILE, CertPaths};

use crate::args::{CertArgs, CertCommand, CertInitArgs, CertIssueArgs};

const PUBLIC: u32 = 0o644;
const PRIVATE: u32 = 0o600;

pub fn run(args: CertArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CertCommand::Init(init_args) => init(&args.dir, args.force, init_args),
        CertCommand::Issue(issue_args) => issue(&args.dir, args.force, issue_args),
    }?;
    Ok(ExitCode::SUCCESS)
}

fn init(dir: &Path, force: bool, args: CertInitArgs) -> anyhow::Result<()> {
    let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    refuse_existing(&[&cert, &key], force, "a cluster CA")?;
    let ca = ClusterCa::generate(args.days)?;
    write_ca(dir, &ca, force)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "cluster CA: {} (key: {}; keep it off the nodes)",
        cert.display(),
        key.display()
    )?;
    writeln!(out, "valid for {} days", args.days)?;
    writeln!(out, "fingerprint: {}", ca.fingerprint())?;
    out.flush()?;
    Ok(())
}

fn issue(dir: &Path, force: bool, args: CertIssueArgs) -> anyhow::Result<()> {
    let ca = ClusterCa::load(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))
        .context("reading the cluster CA (make one with `quern cert init`)")?;
    // The name is the holder's role: say which, and issue no name that
    // would give none.
    let role = Role::of(Some(args.name.as_str()));
    if role == Role::Unrecognized {
        bail!(
            "{:?} gives no role: {}",
            args.name,
            coordinator::authorize::describe(role)
        );
    }
    let out = args.out.unwrap_or_else(|| dir.to_owned());
    let paths = CertPaths::in_dir(&out, &args.name);
    refuse_existing(&[&paths.cert, &paths.key], force, "a certificate")?;
    // A certificate directory other than the CA's gets ca.pem too, so it
    // holds everything its owner needs. Another CA's ca.pem stays unless
    // --force.
    let copy_ca = match std::fs::read(&paths.ca) {
        Ok(existing) if existing == ca.cert_pem().as_bytes() => false,
        Ok(_) if !force => bail!(
            "{} is another CA's certificate; use --force to replace it",
            paths.ca.display()
        ),
        _ => true,
    };
    let issued = ca.issue(&args.name, &args.sans, args.days)?;
    write_issued(&paths, &issued, force)?;
    if copy_ca {
        write_file(&paths.ca, ca.cert_pem().as_bytes(), PUBLIC, force)?;
    }
    let mut names = vec![args.name.clone()];
    names.extend(args.sans.iter().filter(|s| **s != args.name).cloned());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "certificate for {}: {} (key: {})",
        args.name,
        paths.cert.display(),
        paths.key.display()
    )?;
    writeln!(out, "names: {}", names.join(", "))?;
    writeln!(out, "role: {}", coordinator::authorize::describe(role))?;
    writeln!(out, "valid for {} days", args.days)?;
    writeln!(out, "fingerprint: {}", issued.fingerprint)?;
    out.flush()?;
    Ok(())
}

/// For `quern dev --serve`: a CA in `dir` and a certificate for each of
/// `names` valid for `sans`, each made only if missing, so a restart
/// keeps the ones a client already uses.
pub fn local_certificates(dir: &Path, names: &[String], sans: &[String]) -> anyhow::Result<()> {
    let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let ca = if cert.exists() {
        ClusterCa::load(&cert, &key).context("reading the local CA")?
    } else {
        let ca = ClusterCa::generate(LOCAL_DAYS)?;
        write_ca(dir, &ca, false)?;
        ca
    };
    for name in names {
        let paths = CertPaths::in_dir(dir, name);
        if !paths.cert.exists() {
            write_issued(&paths, &ca.issue(name, sans, LOCAL_DAYS)?, false)?;
        }
    }
    Ok(())
}

/// How long `local_certificates` are valid.
const LOCAL_DAYS: u32 = 365;

fn write_ca(dir: &Path, ca: &ClusterCa, force: bool) -> anyhow::Result<()> {
    create_dir(dir)?;
    write_file(
        &dir.join(CA_KEY_FILE),
        ca.key_pem().as_bytes(),
        PRIVATE,
        force,
    )?;
    write_file(
        &dir.join(CA_CERT_FILE),
        ca.cert_pem().as_bytes(),
        PUBLIC,
        force,
    )
}

fn write_issued(paths: &CertPaths, issued: &IssuedCert, force: bool) -> anyhow::Result<()> {
    if let Some(dir) = paths.cert.parent() {
        create_dir(dir)?;
    }
    write_file(&paths.key, issued.key_pem.as_bytes(), PRIVATE, force)?;
    write_file(&paths.cert, issued.cert_pem.as_bytes(), PUBLIC, force)
}

fn refuse_existing(paths: &[&PathBuf], force: bool, what: &str) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} exists: refusing to replace {what}; use --force to overwrite it",
            existing.display()
        );
    }
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Writes a whole new file with `mode`. It is created with `O_EXCL` and
/// `O_NOFOLLOW`: never through a symbolic link planted at its name, never
/// into a file another process made meanwhile. To replace one (`replace`,
/// from `--force`), the new file is created beside it the same way and
/// renamed over it, which replaces a link rather than writing through it.
fn write_file(path: &Path, contents: &[u8], mode: u32, replace: bool) -> anyhow::Result<()> {
    let created = if replace {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        path.with_file_name(format!(".{name}.new-{}", std::process::id()))
    } else {
        path.to_owned()
    };
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&created)?;
        // The mode exactly, whatever the umask.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        if replace {
            std::fs::rename(&created, path)?;
        }
        Ok(())
    };
    write()
        .inspect_err(|_| {
            if replace {
                let _ = std::fs::remove_file(&created);
            }
        })
        .with_context(|| format!("writing {}", path.display()))
}
