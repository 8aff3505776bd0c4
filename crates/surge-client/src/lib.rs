//! surge-client
