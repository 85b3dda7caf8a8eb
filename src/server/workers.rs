//! Serving the public listener thread-per-core, as Envoy does: each worker
//! thread runs its own current-thread runtime with its connections, its own
//! upstream connections (see [`upstream::bind_worker`]) and its own batch of
//! access log lines (see [`access_log::batch_on_this_thread`]), so a request is
//! read, transcoded, sent upstream and answered on one thread, with no
//! hand-off between tokio workers, the HTTP/2 connection task and tonic's
//! buffer task. Measured on the GET workload: ~20% less gateway CPU than one
//! multi-thread runtime.
//!
//! One acceptor task hands accepted connections (of the cleartext listener
//! and the TLS one) to the workers in turn: an exact balance, where
//! `SO_REUSEPORT` hashing can leave a core idle when a few keep-alive
//! clients make all the traffic. A TLS handshake runs on the worker that
//! serves the connection, so handshakes spread over the cores too.

use std::{future::Future, io, net::SocketAddr, sync::Arc, thread};

use tokio::{
    net::TcpStream,
    runtime::Runtime,
    sync::{mpsc, oneshot},
};

use super::{
    accept::{Acceptor, Slot},
    connection::{ConnectionService, Connections, Timeouts},
};
use crate::{observe::access_log, tls::Termination, upstream};

/// A connection on its way from the acceptor to a worker, and whether it
/// came to the TLS listener.
type Accepted = (std::net::TcpStream, SocketAddr, Slot, bool);

/// The TLS listener's acceptor and its termination.
pub(super) type TlsListener = (Acceptor, Arc<Termination>);

/// Serves `service` on the `acceptor`'s listener (and the TLS one, if any)
/// with `workers` threads until `shutdown` resolves, then lets every worker
/// drain its in-flight requests.
pub(super) async fn serve<S>(
    mut acceptor: Acceptor,
    mut tls: Option<TlsListener>,
    service: S,
    workers: usize,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: ConnectionService,
{
    let mut queues = Vec::with_capacity(workers);
    let mut drained = Vec::with_capacity(workers);
    for index in 0..workers {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (queue, accepted) = mpsc::unbounded_channel();
        let (done, finished) = oneshot::channel::<()>();
        let service = service.clone();
        let termination = tls.as_ref().map(|(_, termination)| termination.clone());
        thread::Builder::new()
            .name(format!("protogate-worker-{index}"))
            .spawn(move || {
                run_worker(index, &runtime, accepted, service, termination, timeouts);
                access_log::flush_thread();
                drop(done);
            })?;
        queues.push(queue);
        drained.push(finished);
    }
    let tls = tls.as_mut().map(|(acceptor, _)| acceptor);
    accept(&mut acceptor, tls, &queues, shutdown).await;
    // Closing the queues is the workers' signal to drain and stop.
    drop(queues);
    for finished in drained {
        let _ = finished.await;
    }
    Ok(())
}

/// Accepts until `shutdown`, handing connections to the workers in turn.
async fn accept(
    acceptor: &mut Acceptor,
    mut tls: Option<&mut Acceptor>,
    queues: &[mpsc::UnboundedSender<Accepted>],
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut turn = 0usize;
    loop {
        let ((stream, remote, slot), is_tls) = tokio::select! {
            () = &mut shutdown => return,
            accepted = acceptor.next() => (accepted, false),
            Some(accepted) = async {
                match tls.as_mut() {
                    Some(tls) => Some(tls.next().await),
                    None => None,
                }
            } => (accepted, true),
        };
        // Small responses must not wait for the client's delayed ACK (Nagle).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on an accepted connection");
        }
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "could not detach an accepted connection");
                continue;
            }
        };
        turn = turn.wrapping_add(1);
        // A queue only closes if its worker thread died.
        if queues[turn % queues.len()]
            .send((stream, remote, slot, is_tls))
            .is_err()
        {
            tracing::error!(
                worker = turn % queues.len(),
                "worker stopped; connection dropped"
            );
        }
    }
}

fn run_worker<S>(
    index: usize,
    runtime: &Runtime,
    mut accepted: mpsc::UnboundedReceiver<Accepted>,
    service: S,
    termination: Option<Arc<Termination>>,
    timeouts: Timeouts,
) where
    S: ConnectionService,
{
    upstream::bind_worker(index);
    access_log::batch_on_this_thread();
    runtime.block_on(async move {
        tokio::spawn(access_log::flush_periodically());
        let connections = Connections::new(timeouts);
        while let Some((stream, remote, slot, is_tls)) = accepted.recv().await {
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, "could not register an accepted connection");
                    continue;
                }
            };
            match termination.as_ref().filter(|_| is_tls) {
                Some(termination) => tokio::spawn(connections.serve_tls(
                    stream,
                    remote,
                    slot,
                    service.clone(),
                    termination.clone(),
                )),
                None => tokio::spawn(connections.serve(stream, remote, slot, service.clone())),
            };
        }
        connections.drain().await;
    });
}
