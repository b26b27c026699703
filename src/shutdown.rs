//! A shutdown request shared between the signal handler, the scheduler and
//! the delivery loop.

use tokio::sync::watch;

/// The receiving side: cheap to clone, checked between units of work.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side, held by whoever listens for signals.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    /// Creates a linked trigger and receiver.
    pub fn channel() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger(sender), Shutdown(receiver))
    }

    /// Returns a receiver that is never triggered, for one-off runs and tests.
    pub fn never() -> Shutdown {
        Shutdown::channel().1
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once shutdown is requested.
    pub async fn requested(&mut self) {
        // An error means the trigger is gone without firing: never complete.
        if self.0.wait_for(|requested| *requested).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}
