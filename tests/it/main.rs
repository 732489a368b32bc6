//! The one integration test binary. Storage tests run on SQLite and on PostgreSQL
//! (`sqlite::…` and `postgres::…` in the output).

mod attribution;
mod common;
mod config;
mod foundation;
mod intake;
mod observability;
mod processing;
