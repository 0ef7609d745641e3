//! A TCP load balancer in front of the replicas' gateways, as operators put one (or DNS
//! with several addresses) in front of replicas: each new connection goes to the next
//! backend in turn that accepts it; bytes are copied both ways untouched (TLS is end to
//! end). A backend that died refuses connections and is skipped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running balancer, stopped on drop.
#[derive(Debug)]
pub struct Balancer {
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free loopback port and spreads connections over `backends`
    /// (`host:port` each).
    pub async fn start(backends: Vec<String>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let backends = Arc::new(backends);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let backends = Arc::clone(&backends);
                let next = Arc::clone(&next);
                tokio::spawn(async move {
                    let first = next.fetch_add(1, Ordering::Relaxed);
                    for offset in 0..backends.len() {
                        let backend = &backends[(first + offset) % backends.len()];
                        if let Ok(mut upstream) = TcpStream::connect(backend).await {
                            let mut client = client;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                    // No backend accepts: the client sees its connection closed.
                });
            }
        });
        Ok(Balancer { addr, task })
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
