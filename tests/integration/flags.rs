//! Flag job tests.
