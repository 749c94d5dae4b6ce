//! The per-call state machine (sans-IO).
