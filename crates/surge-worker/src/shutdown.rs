//! The worker's shutdown signal: surge-ops' one idiom, shared with the autoscaler.

pub use surge_ops::shutdown::{channel, Shutdown, ShutdownTrigger};
