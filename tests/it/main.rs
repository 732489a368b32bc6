//! The one integration test binary. Storage tests run on SQLite and on PostgreSQL
//! (`sqlite::…` and `postgres::…` in the output).

mod agent;
mod amendments;
mod api;
mod attribution;
mod bounds;
mod cluster;
mod common;
mod config;
mod console;
mod costs;
mod fakes;
mod followups;
mod foundation;
mod fuzz;
mod handoffs;
mod identity;
mod inbox;
mod intake;
mod llama;
mod media;
mod models;
mod observability;
mod preferences;
mod processing;
mod properties;
mod takeover;
mod templates;
mod tenants;
