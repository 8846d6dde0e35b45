//! One shutdown signal, fired once and observed by every task that must stop.
//!
//! `main` fires it on SIGINT/SIGTERM; listeners stop accepting when they see it, the
//! server then drains connections and the event writer (see `server::run`).

use tokio::sync::watch;

/// Fires the shutdown; dropping it without firing also counts as firing.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A cloneable view of the shutdown.
#[derive(Debug, Clone)]
pub struct Signal(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Signal) {
    let (sender, receiver) = watch::channel(false);
    (Trigger(sender), Signal(receiver))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Signal {
    /// Resolves once the shutdown has fired (at once if it already has).
    pub async fn recv(&mut self) {
        // An error means the trigger was dropped, which also means stop.
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}

/// Waits for SIGINT or SIGTERM and names the one that came.
pub async fn os_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_fire() {
        let (trigger, signal) = channel();
        let mut a = signal.clone();
        let mut b = signal;
        assert!(!a.is_fired());
        trigger.fire();
        a.recv().await;
        b.recv().await;
        assert!(b.is_fired());
    }

    #[tokio::test]
    async fn dropping_the_trigger_stops_too() {
        let (trigger, mut signal) = channel();
        drop(trigger);
        signal.recv().await;
    }
}
