//! The one shutdown signal of Surge's long-running processes (the worker and the
//! autoscaler): a [`ShutdownTrigger`] that fires it and any number of [`Shutdown`]
//! clones that every long task holds (after mini-redis), both over tokio-util's
//! `CancellationToken`. A task selects between its work and [`Shutdown::wait`].

use tokio_util::sync::CancellationToken;

/// Fires the shutdown signal.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(CancellationToken);

/// Receives the shutdown signal; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(CancellationToken);

/// A connected trigger and receiver.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let token = CancellationToken::new();
    (ShutdownTrigger(token.clone()), Shutdown(token))
}

impl ShutdownTrigger {
    /// Asks every holder of a [`Shutdown`] to stop.
    pub fn trigger(&self) {
        self.0.cancel();
    }
}

impl Shutdown {
    /// True once shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves when shutdown is requested (at once if it already was).
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// A future that resolves on shutdown and owns what it needs, for APIs that take
    /// one (axum's graceful shutdown, say).
    pub async fn fired(self) {
        self.0.cancelled_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let (trigger, shutdown) = channel();
        let other = shutdown.clone();
        assert!(!shutdown.is_triggered());
        let waiter = tokio::spawn(async move { other.wait().await });
        trigger.trigger();
        waiter.await.unwrap();
        assert!(shutdown.is_triggered());
        // Already fired: resolves at once.
        shutdown.wait().await;
    }
}
