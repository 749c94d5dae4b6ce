//! IO drivers.
