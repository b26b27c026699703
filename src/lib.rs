//! session-steward finds sessions that providers have not reported,
//! reminds the providers by email and flags for support the holds that
//! reminders cannot fix.
//!
//! The design, one module per job:
//!
//! - [`reminders`] scans overdue scheduled sessions and records at most one
//!   digest per provider and local day in the outbox;
//! - [`outbox`] claims recorded digests, re-checks their sessions and
//!   delivers them through [`email`], built by [`compose`];
//! - [`flags`] keeps support's review list in step with the database,
//!   [`report`] prints it and [`support_page`] serves it to a browser;
//! - [`support_digest`] records a digest of open flags for support per
//!   schedule slot in the same outbox;
//! - [`jobs`] wraps each job as one tick at an injected instant, and
//!   [`daemon`] runs the ticks on cron schedules;
//! - [`policy`] and [`recipient`] hold the rules as pure functions;
//! - [`metrics`] counts what the jobs do for Prometheus, and [`http`]
//!   serves the metrics and the health checks for `run`;
//! - [`config`], [`db`], [`runs`], [`shutdown`] and [`telemetry`] are the plumbing;
//!   [`dataset`] and [`demo`] provide the synthetic data and the demo;
//! - [`status`], [`preview`] and [`check`] are the operator commands;
//! - [`benchmark`] measures the reminder cycle at platform scale.
//!
//! The worker reads the platform's tables (providers, members, allotments,
//! sessions) and writes only its own (reminders, reminder_items,
//! support_digests, flags, job_runs).

pub mod benchmark;
pub mod check;
pub mod cli;
pub mod compose;
pub mod config;
pub mod daemon;
pub mod dataset;
pub mod db;
pub mod demo;
pub mod email;
pub mod flags;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod outbox;
pub mod policy;
pub mod preview;
pub mod recipient;
pub mod reminders;
pub mod report;
pub mod runs;
pub mod shutdown;
pub mod status;
pub mod support_digest;
pub mod support_page;
pub mod telemetry;
