//! The side tasks beside the engine that run on a timer (config sync, heartbeats):
//! one tick per interval, a slow tick delays the next instead of bunching them, and
//! the task ends when `shutdown` turns true (a tick in progress finishes first).

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// A task's state and what it does on each tick.
pub trait Tick: Send + 'static {
    fn tick(&mut self) -> impl Future<Output = ()> + Send;
}

/// Spawns `task`, ticking every `every` until `shutdown` turns true.
pub fn spawn_every(
    every: Duration,
    shutdown: &watch::Receiver<bool>,
    mut task: impl Tick,
) -> tokio::task::JoinHandle<()> {
    let mut shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => task.tick().await,
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    })
}
