//! The shop's gRPC backend (`acme.shop.v1.ShopService`), for the README's
//! "Bring your own services":
//!
//! ```sh
//! cargo run --example shop-backend                          # on 127.0.0.1:50052
//! cargo run --example shop-backend -- --listen 127.0.0.1:6000
//! ```

mod service;

use std::{error::Error, net::SocketAddr};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Beside the example backend's 50051.
const DEFAULT_LISTEN: &str = "127.0.0.1:50052";

/// `--listen ADDR`, or the default.
fn listen_addr() -> Result<SocketAddr, Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = match args.as_slice() {
        [] => DEFAULT_LISTEN,
        [flag, addr] if flag == "--listen" => addr,
        _ => return Err("usage: shop-backend [--listen ADDR]".into()),
    };
    Ok(protogate::config::resolve_addr(listen)?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let listener = TcpListener::bind(listen_addr()?).await?;
    println!(
        "acme.shop.v1.ShopService listening on {}",
        listener.local_addr()?
    );
    tonic::transport::Server::builder()
        .add_service(service::Shops::seeded().into_server())
        .add_service(service::Shops::reflection())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            // If the handler cannot be installed, serve until killed instead.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await?;
    Ok(())
}
