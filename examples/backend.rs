//! The example gRPC backends (`acme.orders.v1`, `acme.orders.v2`, `acme.users.v1`) as a
//! standalone server, to run the gateway against a separate process:
//!
//! ```sh
//! cargo run --example backend -- --listen 127.0.0.1:50051
//! ```

use std::{error::Error, net::SocketAddr};

use tokio::net::TcpListener;

/// Where to listen unless `--listen` says otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// The `--listen ADDR` (or `--listen=ADDR`) address.
fn listen_addr() -> Result<SocketAddr, Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut listen = DEFAULT_LISTEN.to_owned();
    while let Some(arg) = args.next() {
        listen = if arg == "--listen" {
            args.next().ok_or("--listen needs an address")?
        } else if let Some(value) = arg.strip_prefix("--listen=") {
            value.to_owned()
        } else {
            return Err(
                format!("unexpected argument {arg:?}; usage: backend [--listen ADDR]").into(),
            );
        };
    }
    Ok(listen.parse()?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let listener = TcpListener::bind(listen_addr()?).await?;
    println!(
        "example gRPC backends listening on {}",
        listener.local_addr()?
    );
    protogate::demo::serve_examples(listener, async {
        // If the handler cannot be installed, serve until killed instead.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await?;
    Ok(())
}
