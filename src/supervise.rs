//! Watching the daemon's long-lived tasks: the HTTP server, the outbox, each feed's poller.
//!
//! Each of them runs until the daemon stops. One that ends before (a panic, an error its
//! loop cannot retry) would leave the daemon half alive: `/metrics` gone, notifications no
//! longer sent, a feed no longer polled, with nothing but a line in the log. A
//! [`Supervisor`] reports every end of a task it watches, with its name and how it ended;
//! the daemon treats one before the stop as a failure and exits at once with an error, as
//! after a crash, so that the service manager starts it again (`Restart=on-failure`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinError, JoinHandle};

/// How a watched task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It returned, with nothing to say.
    Returned,
    /// It returned an error.
    Failed(String),
    /// It panicked; the panic's message where it was a string.
    Panicked(String),
    /// It was aborted.
    Cancelled,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Returned => f.write_str("returned"),
            Ending::Failed(e) => write!(f, "failed: {e}"),
            Ending::Panicked(m) => write!(f, "panicked: {m}"),
            Ending::Cancelled => f.write_str("was cancelled"),
        }
    }
}

/// The end of one watched task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The name it was watched under, e.g. `feed wages`.
    pub task: String,
    pub how: Ending,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.task, self.how)
    }
}

/// What a task's output says about its end.
pub trait Outcome {
    fn ending(&self) -> Ending;
}

impl Outcome for () {
    fn ending(&self) -> Ending {
        Ending::Returned
    }
}

impl<E: fmt::Display> Outcome for Result<(), E> {
    fn ending(&self) -> Ending {
        match self {
            Ok(()) => Ending::Returned,
            Err(e) => Ending::Failed(e.to_string()),
        }
    }
}

/// Reports the end of every task it watches, in the order they end.
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Ended>,
    rx: mpsc::UnboundedReceiver<Ended>,
}

impl Default for Supervisor {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Supervisor { tx, rx }
    }
}

impl Supervisor {
    /// Spawns `future` on the runtime and watches it as `task`.
    pub fn spawn<F>(&self, task: impl Into<String>, future: F) -> Watched
    where
        F: Future + Send + 'static,
        F::Output: Outcome + Send + 'static,
    {
        self.watch(task, tokio::spawn(future))
    }

    /// Watches a task already spawned.
    pub fn watch<T: Outcome + Send + 'static>(
        &self,
        task: impl Into<String>,
        handle: JoinHandle<T>,
    ) -> Watched {
        let task = task.into();
        let abort = handle.abort_handle();
        let tx = self.tx.clone();
        let watcher = tokio::spawn(async move {
            let how = match handle.await {
                Ok(out) => out.ending(),
                Err(e) => ending_of(e),
            };
            // The receiver goes only with the supervisor: nobody is left to tell.
            let _ = tx.send(Ended { task, how });
        });
        Watched { watcher, abort }
    }

    /// The next end of a watched task; waits for one. Never returns `None` while the
    /// supervisor lives (it holds a sender itself).
    pub async fn next_end(&mut self) -> Option<Ended> {
        self.rx.recv().await
    }

    /// An end already reported, if there is one; does not wait.
    pub fn try_next_end(&mut self) -> Option<Ended> {
        self.rx.try_recv().ok()
    }
}

fn ending_of(e: JoinError) -> Ending {
    if e.is_cancelled() {
        return Ending::Cancelled;
    }
    match e.try_into_panic() {
        Ok(payload) => Ending::Panicked(
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string()),
        ),
        Err(e) => Ending::Failed(e.to_string()),
    }
}

/// A watched task: completes once the task has ended and its end was reported.
pub struct Watched {
    watcher: JoinHandle<()>,
    abort: AbortHandle,
}

impl Watched {
    /// Aborts the task (its end is reported as [`Ending::Cancelled`]).
    pub fn abort(&self) {
        self.abort.abort();
    }
}

impl Future for Watched {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The watcher only awaits and sends; it cannot panic, and it is never aborted.
        Pin::new(&mut self.watcher).poll(cx).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reports_each_end_with_its_task_and_how() {
        let mut s = Supervisor::default();
        let ok = s.spawn("quiet", async {});
        ok.await;
        assert_eq!(
            s.next_end().await,
            Some(Ended {
                task: "quiet".into(),
                how: Ending::Returned
            })
        );

        let failed = s.spawn("http server", async {
            Err::<(), _>(std::io::Error::other("listener closed"))
        });
        failed.await;
        let end = s.next_end().await.unwrap();
        assert_eq!(end.how, Ending::Failed("listener closed".into()));
        assert_eq!(end.to_string(), "http server failed: listener closed");

        let panicked = s.spawn("feed wages", async {
            let n: u32 = "x".len() as u32;
            if n == 1 {
                panic!("decoder state {n} impossible");
            }
        });
        panicked.await;
        assert_eq!(
            s.next_end().await.unwrap().how,
            Ending::Panicked("decoder state 1 impossible".into())
        );

        let literal = s.spawn("outbox", async {
            if "x".len() == 1 {
                panic!("plain");
            }
        });
        literal.await;
        assert_eq!(
            s.next_end().await.unwrap().how,
            Ending::Panicked("plain".into())
        );
    }

    #[tokio::test]
    async fn a_running_task_reports_nothing_until_aborted() {
        let mut s = Supervisor::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let running = s.spawn("feed roster", async move {
            let _ = rx.await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.try_next_end(), None);
        running.abort();
        running.await;
        assert_eq!(
            s.next_end().await,
            Some(Ended {
                task: "feed roster".into(),
                how: Ending::Cancelled
            })
        );
        drop(tx);
    }

    #[tokio::test]
    async fn watches_a_task_spawned_elsewhere() {
        let mut s = Supervisor::default();
        let handle = tokio::spawn(async { Err::<(), String>("bind lost".into()) });
        s.watch("api", handle).await;
        assert_eq!(
            s.try_next_end().map(|e| e.to_string()),
            Some("api failed: bind lost".into())
        );
    }
}
