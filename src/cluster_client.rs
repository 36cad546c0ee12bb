//! What client commands (`status`, `submit`) share: a runtime, and a
//! connection to the coordinators with the client's certificate.

use anyhow::{Context, ensure};
use coordinator_client::CoordinatorClient;
use proto_schema::tls::{CertPaths, TlsIdentity};

use crate::args::ClientArgs;

/// A runtime for one client command: the QUIC endpoint's driver runs on
/// its worker while the command reads its input on the calling thread.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// A client of the coordinators in `args`. Call inside the runtime.
pub fn connect(args: &ClientArgs) -> anyhow::Result<CoordinatorClient> {
    ensure!(
        !args.coordinators.is_empty(),
        "no coordinator address: give --coordinator HOST:PORT or [client] coordinators"
    );
    let paths = CertPaths::in_dir(&args.cert_dir, &args.cert_name);
    let identity = TlsIdentity::load(&paths).with_context(|| {
        format!(
            "loading the client certificate {:?} (make one with `quern cert issue --name {}`)",
            args.cert_name, args.cert_name
        )
    })?;
    Ok(CoordinatorClient::quic(
        &identity,
        args.coordinators.clone(),
    )?)
}
