//! proxymesh-daemon: the per-site daemon.
pub mod storage;
