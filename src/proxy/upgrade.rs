//! Upgraded connections (WebSocket and other `Upgrade:` protocols): after the
//! server's `101`, bytes are copied both ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::pool::Sender;
use crate::upstream::Lease;

/// Joins the client's and the server's upgraded connections. The lease keeps the
/// tunnel counted as active on its server (so `drain` waits for it).
pub async fn tunnel(client: OnUpgrade, server: OnUpgrade, lease: Lease, sender: Sender) {
    let (client, server) = match tokio::try_join!(client, server) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut server = TokioIo::new(server);
    match tokio::io::copy_bidirectional(&mut client, &mut server).await {
        Ok((up, down)) => debug!(up, down, server = %lease.server().addr, "tunnel closed"),
        Err(e) => debug!(error = %e, "tunnel ended with an error"),
    }
    drop(sender);
    drop(lease);
}
