//! Serving the public listener thread-per-core, as Envoy does: each worker
//! thread runs its own current-thread runtime with its connections, its own
//! upstream connections (see [`upstream::bind_worker`]) and its own batch of
//! access log lines (see [`access_log::batch_on_this_thread`]), so a request is
//! read, transcoded, sent upstream and answered on one thread, with no
//! hand-off between tokio workers, the HTTP/2 connection task and tonic's
//! buffer task. Measured on the GET workload: ~20% less gateway CPU than one
//! multi-thread runtime.
//!
//! One acceptor task hands accepted connections to the workers in turn: an
//! exact balance, where `SO_REUSEPORT` hashing can leave a core idle when a
//! few keep-alive clients make all the traffic. Cleartext connections go
//! to the workers the [`Balance`] keeps active (as few as the load needs),
//! and move between them as it changes; TLS ones to every worker in turn
//! (a TLS handshake runs on the worker that serves the connection, so
//! handshakes spread over the cores too).
//!
//! While one worker serves, each runs on a CPU of its own
//! (`super::placement`, `pin_workers`).

use std::{future::Future, io, net::SocketAddr, sync::Arc, thread};

use tokio::{
    net::TcpStream,
    runtime::Runtime,
    sync::{mpsc, oneshot},
};

use super::{
    accept::{Acceptor, Slot},
    balance::Balance,
    connection::{ConnectionService, Connections, Moved, Moves, Timeouts},
};
use crate::{observe::access_log, timers, tls::Termination, upstream};

/// A connection on its way from the acceptor to a worker, and whether it
/// came to the TLS listener.
type Accepted = (std::net::TcpStream, SocketAddr, Slot, bool);

/// The TLS listener's acceptor and its termination.
pub(super) type TlsListener = (Acceptor, Arc<Termination>);

/// A worker's queues: of connections accepted for it, and of connections
/// moved to it from other workers.
struct Queues {
    accepted: mpsc::UnboundedReceiver<Accepted>,
    moved: mpsc::UnboundedReceiver<Moved>,
}

/// Serves `service` on the `acceptor`'s listener (and the TLS one, if any)
/// with as many threads as `balance` has workers until `shutdown`
/// resolves, then lets every worker drain its in-flight requests.
pub(super) async fn serve<S>(
    mut acceptor: Acceptor,
    mut tls: Option<TlsListener>,
    service: S,
    balance: Arc<Balance>,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: ConnectionService,
{
    let workers = balance.workers();
    let (moving, moved): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
    let moving: Arc<[_]> = moving.into();
    let mut queues = Vec::with_capacity(workers);
    let mut drained = Vec::with_capacity(workers);
    for (index, moved) in moved.into_iter().enumerate() {
        let (parks, wakes) = (balance.clone(), balance.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || parks.parks(index))
            .on_thread_unpark(move || wakes.woke(index))
            .build()?;
        let (queue, accepted) = mpsc::unbounded_channel();
        let (done, finished) = oneshot::channel::<()>();
        let service = service.clone();
        let termination = tls.as_ref().map(|(_, termination)| termination.clone());
        // One worker has nowhere to move a connection to, nor a balance to keep.
        let moves = (workers > 1).then(|| Moves::new(index, balance.clone(), moving.clone()));
        // On the clock thread, for as long as the first worker runs: no
        // worker is woken for it (and it rests while every worker sleeps).
        let controller = (workers > 1 && index == 0).then(|| balance.clone());
        let placement = balance.placement().cloned();
        thread::Builder::new()
            .name(format!("protogate-worker-{index}"))
            .spawn(move || {
                if let Some(placement) = placement {
                    placement.enter(index);
                }
                let queues = Queues { accepted, moved };
                let controller = controller.map(|balance| {
                    // Without a clock thread, it is spawned on this worker.
                    let _worker = runtime.enter();
                    timers::spawn_on_clock(balance.keep_balanced())
                });
                run_worker(
                    index,
                    &runtime,
                    queues,
                    moves,
                    service,
                    termination,
                    timeouts,
                );
                if let Some(controller) = controller {
                    controller.abort();
                }
                access_log::flush_thread();
                drop(done);
            })?;
        queues.push(queue);
        drained.push(finished);
    }
    drop(moving);
    let tls = tls.as_mut().map(|(acceptor, _)| acceptor);
    accept(&mut acceptor, tls, &queues, &balance, shutdown).await;
    // Closing the queues is the workers' signal to drain and stop.
    drop(queues);
    for finished in drained {
        let _ = finished.await;
    }
    Ok(())
}

/// Accepts until `shutdown`, handing connections to the workers in turn:
/// cleartext ones to the active workers, TLS ones to all.
async fn accept(
    acceptor: &mut Acceptor,
    mut tls: Option<&mut Acceptor>,
    queues: &[mpsc::UnboundedSender<Accepted>],
    balance: &Balance,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let (mut turn, mut tls_turn) = (0usize, 0usize);
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
        let worker = if is_tls {
            tls_turn = tls_turn.wrapping_add(1);
            tls_turn % queues.len()
        } else {
            turn = turn.wrapping_add(1);
            turn % balance.active().clamp(1, queues.len())
        };
        // A queue only closes if its worker thread died.
        if queues[worker].send((stream, remote, slot, is_tls)).is_err() {
            tracing::error!(worker, "worker stopped; connection dropped");
        }
    }
}

fn run_worker<S>(
    index: usize,
    runtime: &Runtime,
    mut queues: Queues,
    moves: Option<Moves>,
    service: S,
    termination: Option<Arc<Termination>>,
    timeouts: Timeouts,
) where
    S: ConnectionService,
{
    upstream::bind_worker(index);
    access_log::batch_on_this_thread();
    timers::keep_on_this_thread();
    runtime.block_on(async move {
        tokio::spawn(access_log::flush_periodically());
        let connections = Connections::new(timeouts, moves);
        loop {
            // The moved queue never closes (the workers hold its senders):
            // the accepted one closing is the signal to stop.
            let (stream, remote, slot, is_tls) = tokio::select! {
                accepted = queues.accepted.recv() => match accepted {
                    Some(accepted) => accepted,
                    None => break,
                },
                Some(moved) = queues.moved.recv() => {
                    if let Some(resumed) = connections.resume(moved, service.clone()) {
                        tokio::spawn(resumed);
                    }
                    continue;
                }
            };
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
    timers::drop_kept();
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

    use axum::{body::Body, response::Response};
    use http::Request;
    use metrics::{Counter, Gauge};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;
    use crate::config::LimitsConfig;

    /// Answers with the name of the worker thread that served the request,
    /// and its path.
    fn who_serves() -> impl ConnectionService {
        tower::service_fn(|request: Request<Body>| {
            let worker = thread::current().name().unwrap_or_default().to_owned();
            std::future::ready(Ok::<_, Infallible>(Response::new(Body::from(format!(
                "{worker} {}",
                request.uri().path()
            )))))
        })
    }

    /// Reads one HTTP/1.1 response and returns its body.
    async fn response(client: &mut TcpStream, buffer: &mut Vec<u8>) -> String {
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .and_then(|length| length.trim().parse().ok())
                    .expect("a content-length");
                if buffer.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]);
                    let body = body.into_owned();
                    buffer.drain(..end + 4 + length);
                    return body;
                }
            }
            let mut chunk = [0; 1024];
            let read = client.read(&mut chunk).await.unwrap();
            assert!(read > 0, "the connection closed");
            buffer.extend_from_slice(&chunk[..read]);
        }
    }

    struct Client {
        stream: TcpStream,
        buffer: Vec<u8>,
    }

    impl Client {
        async fn connect(address: SocketAddr) -> Self {
            let stream = TcpStream::connect(address).await.unwrap();
            Self {
                stream,
                buffer: Vec::new(),
            }
        }

        async fn get(&mut self, path: &str) -> String {
            self.send(&format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n"))
                .await;
            response(&mut self.stream, &mut self.buffer).await
        }

        async fn send(&mut self, bytes: &str) {
            self.stream.write_all(bytes.as_bytes()).await.unwrap();
        }

        async fn response(&mut self) -> String {
            response(&mut self.stream, &mut self.buffer).await
        }
    }

    /// Waits until `worker` serves `count` movable connections.
    async fn until_serving(balance: &Balance, worker: usize, count: usize) {
        for _ in 0..500 {
            if balance.movable(worker) == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "worker {worker} serves {} movable connections, not {count}",
            balance.movable(worker)
        );
    }

    /// The timeout of the `epoll_wait` that the thread `tid` of this
    /// process is in, from `/proc`; `None` if it is in no such call.
    #[cfg(target_os = "linux")]
    fn epoll_timeout(tid: &str) -> Option<i32> {
        // The call's number, then its arguments; the timeout is the fourth.
        let epoll_waits: &[&str] = if cfg!(target_arch = "x86_64") {
            &["232", "281"]
        } else {
            &["22"]
        };
        let call = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
        let mut fields = call.split_whitespace();
        if !epoll_waits.contains(&fields.next()?) {
            return None;
        }
        let timeout = fields.nth(3)?.trim_start_matches("0x");
        // An `int`: the register's low 32 bits.
        Some(u64::from_str_radix(timeout, 16).ok()? as u32 as i32)
    }

    /// A serving worker's own timer wheel stays empty (its connections'
    /// deadlines and the kept request timers are on the clock thread, the
    /// balance's controller runs there), so it sleeps with no timeout, for
    /// which the kernel arms no timer.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_idle_worker_sleeps_without_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let balance = Balance::new(2, Counter::noop(), Gauge::noop(), None);
        // Answers with the serving thread's id, with a request's deadline
        // timer set around it, as the data plane's steps set it.
        let thread_id = tower::service_fn(|_: Request<Body>| {
            futures_util::FutureExt::boxed(async {
                let timer = timers::Timer::until(
                    tokio::time::Instant::now() + Duration::from_secs(60),
                    timers::Kind::Request,
                );
                let id = timers::timeout(timer, async {
                    let path = std::fs::read_link("/proc/thread-self").unwrap();
                    path.file_name().unwrap().to_string_lossy().into_owned()
                })
                .await
                .unwrap();
                Ok::<_, Infallible>(Response::new(Body::from(id)))
            })
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            Acceptor::new(listener, 16),
            None,
            thread_id,
            balance.clone(),
            Timeouts::from(&LimitsConfig::default()),
            async move {
                let _ = stopped.await;
            },
        ));
        balance.grow();
        // Kept open: each has its deadline, and a worker keeps the timer.
        let mut clients = [
            Client::connect(address).await,
            Client::connect(address).await,
        ];
        let mut workers = Vec::new();
        for client in &mut clients {
            workers.push(client.get("/").await);
        }
        assert_ne!(workers[0], workers[1], "one connection on each worker");

        for worker in &workers {
            let mut sleeps = Vec::new();
            for _ in 0..500 {
                // A timeout of 0 is a look without a sleep.
                if let Some(timeout) = epoll_timeout(worker).filter(|t| *t != 0) {
                    sleeps.push(timeout);
                    if sleeps.len() == 20 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(sleeps, [-1; 20], "worker thread {worker}");
        }

        drop(clients);
        let _ = stop.send(());
        served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn connections_move_between_requests_as_workers_leave_and_join() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let balance = Balance::new(2, Counter::noop(), Gauge::noop(), None);
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            Acceptor::new(listener, 16),
            None,
            who_serves(),
            balance.clone(),
            Timeouts::from(&LimitsConfig::default()),
            async move {
                let _ = stopped.await;
            },
        ));

        // Two active workers: connections are accepted onto each in turn.
        balance.grow();
        let mut first = Client::connect(address).await;
        assert_eq!(first.get("/a").await, "protogate-worker-1 /a");
        let mut second = Client::connect(address).await;
        assert_eq!(second.get("/a").await, "protogate-worker-0 /a");
        until_serving(&balance, 1, 1).await;
        until_serving(&balance, 0, 1).await;

        // Worker 1 leaves: its connection moves the next time it is seen
        // between two requests (before or after the next, as the worker
        // happens to look at it), with the start of a pipelined head it
        // had read.
        balance.shrink();
        first
            .send("GET /b HTTP/1.1\r\nhost: a\r\n\r\nGET /c HTT")
            .await;
        let answer = first.response().await;
        assert!(
            ["protogate-worker-1 /b", "protogate-worker-0 /b"].contains(&answer.as_str()),
            "{answer}"
        );
        until_serving(&balance, 0, 2).await;
        until_serving(&balance, 1, 0).await;
        first.send("P/1.1\r\nhost: a\r\n\r\n").await;
        assert_eq!(first.response().await, "protogate-worker-0 /c");
        assert_eq!(first.get("/d").await, "protogate-worker-0 /d");
        // A new connection goes to the active worker only.
        let mut third = Client::connect(address).await;
        assert_eq!(third.get("/a").await, "protogate-worker-0 /a");
        until_serving(&balance, 0, 3).await;

        // Worker 1 joins again: worker 0 hands it one of its three, the
        // first it sees between two requests.
        balance.grow();
        let mut clients = [first, second, third];
        for client in &mut clients {
            assert!(client.get("/e").await.ends_with(" /e"));
        }
        until_serving(&balance, 1, 1).await;
        until_serving(&balance, 0, 2).await;
        for _ in 0..2 {
            let mut served = Vec::new();
            for client in &mut clients {
                served.push(client.get("/f").await);
            }
            served.sort();
            assert_eq!(
                served,
                [
                    "protogate-worker-0 /f",
                    "protogate-worker-0 /f",
                    "protogate-worker-1 /f"
                ]
            );
        }

        drop(clients);
        let _ = stop.send(());
        served.await.unwrap().unwrap();
    }
}
