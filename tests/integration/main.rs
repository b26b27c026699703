//! Integration tests against a real PostgreSQL (a fresh database per test,
//! created by `#[sqlx::test]` on the server in DATABASE_URL) and a real
//! SMTP server on loopback.

mod helpers;
mod smtp;
mod webdriver;

mod benchmark;
mod check;
mod cli;
mod delivery;
mod flags;
mod http;
mod least_privilege;
mod logs;
mod message;
mod preview;
mod privacy;
mod processes;
mod reminders;
mod status;
mod support_digest;
mod support_page;
mod systemd;
