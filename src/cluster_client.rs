//! What client commands (`status`, `submit`, and `export`, `get`, `stats`
//! on a cluster) share: a runtime, and a connection to the coordinators
//! (and to the nodes, for reads) with the client's certificate.

use anyhow::{Context, ensure};
use coordinator_client::CoordinatorClient;
use node::reads::ClusterReader;
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
    Ok(CoordinatorClient::quic(
        &identity(args)?,
        args.coordinators.clone(),
    )?)
}

fn identity(args: &ClientArgs) -> anyhow::Result<TlsIdentity> {
    let paths = CertPaths::in_dir(&args.cert_dir, &args.cert_name);
    TlsIdentity::load(&paths).with_context(|| {
        format!(
            "loading the client certificate {:?} (make one with `quern cert issue --name {}`)",
            args.cert_name, args.cert_name
        )
    })
}

/// A reader of `dataset` on every node the coordinators in `args` list,
/// and the runtime its streams run on (call its methods outside it).
pub fn reader(
    args: &ClientArgs,
    dataset: &str,
) -> anyhow::Result<(tokio::runtime::Runtime, ClusterReader)> {
    let runtime = runtime()?;
    let reader = runtime.block_on(async {
        let mut client = connect(args)?;
        let nodes = node::reads::remote::nodes_of(&mut client, dataset).await?;
        anyhow::Ok(ClusterReader::new(&identity(args)?, nodes, dataset)?)
    })?;
    Ok((runtime, reader))
}
