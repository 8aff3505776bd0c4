//! A TCP proxy on 127.0.0.1 that a test can freeze: while frozen, no byte moves in
//! either direction on any connection, old or new, but no connection is closed either.
//! That is what a stalled network looks like to both ends (a half-open connection),
//! the case only heartbeats can detect.
//!
//! It runs on its own thread and Tokio runtime, so a test that blocks its own threads
//! (sleeps, waits on child processes) cannot stall it by accident.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stops (and drops every connection) when dropped.
pub struct FreezeProxy {
    /// Port the proxy listens on.
    pub port: u16,
    frozen: Arc<watch::Sender<bool>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FreezeProxy {
    /// Starts a proxy from a free port on 127.0.0.1 to `127.0.0.1:target`.
    pub fn start(target: u16) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = std_listener
            .local_addr()
            .expect("reading the listener address")
            .port();
        std_listener
            .set_nonblocking(true)
            .expect("setting the socket non-blocking");
        let (frozen, _) = watch::channel(false);
        let frozen = Arc::new(frozen);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let f = frozen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("proxy listener");
                tokio::select! {
                    _ = stop_rx => {}
                    _ = accept_loop(listener, target, f) => {}
                }
            });
            rt.shutdown_background();
        });
        Self {
            port,
            frozen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops moving bytes, on every connection, until [`FreezeProxy::thaw`].
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Moves bytes again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezeProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: u16, frozen: Arc<watch::Sender<bool>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let frozen = frozen.clone();
        tokio::spawn(async move {
            // A connection made while frozen connects upstream only after the thaw.
            wait_thawed(&mut frozen.subscribe()).await;
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            tokio::select! {
                _ = pump(cr, uw, frozen.subscribe()) => {}
                _ = pump(ur, cw, frozen.subscribe()) => {}
            }
        });
    }
}

async fn wait_thawed(rx: &mut watch::Receiver<bool>) {
    while *rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Copies `from` to `to`, holding every chunk while frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        wait_thawed(&mut frozen).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_thawed(&mut frozen).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
