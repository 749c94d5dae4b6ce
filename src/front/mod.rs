//! The routes: what each HTTP request and Media Stream upgrade gets, sans-IO.
//!
//! - [`admission`]: call slots (`MAX_CALLS`, reservations) and single-use stream ids.
//! - [`routes`]: the routes (webhook, after-stream, media-stream upgrade, health).
//! - [`admin`]: the admin API over the store.
pub mod admin;
pub mod admission;
pub mod routes;
