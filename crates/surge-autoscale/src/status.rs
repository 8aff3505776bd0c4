//! The live status page: what the autoscaler sees and decides, per model, served as
//! one self-contained HTML page (`/`, no external assets, so it works offline) and as
//! JSON (`/api/status`). The board is plain data, updated once per tick and tested
//! without a server.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

/// How far back the chart reaches.
pub const HISTORY: Duration = Duration::from_secs(600);
/// How many decisions each model keeps.
pub const DECISIONS_KEPT: usize = 20;

/// One point of the chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Unix ms.
    pub at_ms: u64,
    /// Ready jobs in the queue.
    pub backlog: u64,
    /// Workers running plus draining.
    pub workers: u32,
}

/// A decision that changed the desired worker count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// Unix ms.
    pub at_ms: u64,
    /// Workers wanted.
    pub desired: u32,
    /// Workers running when it was taken.
    pub running: u32,
    /// Why, as the policy says it.
    pub reason: String,
}

/// One model's row of the page.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelStatus {
    /// Model name (its queue is `<prefix>.jobs.<model>`).
    pub model: String,
    /// Ready jobs in the queue.
    pub backlog: u64,
    /// Jobs held by workers, not yet answered.
    pub in_flight: u64,
    /// Workers running (not draining).
    pub running: u32,
    /// Workers draining.
    pub draining: u32,
    /// Workers wanted.
    pub desired: u32,
    /// Measured jobs/s per busy worker, once known.
    pub rate_per_worker: Option<f64>,
    /// Estimated seconds to drain the work with the workers running now.
    pub time_to_drain_s: Option<f64>,
    /// The last decisions that changed the desired count, newest last.
    pub decisions: VecDeque<DecisionRecord>,
    /// Backlog and workers over the last [`HISTORY`], oldest first.
    pub history: VecDeque<Point>,
}

/// What one tick saw for a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// Unix ms.
    pub at_ms: u64,
    /// Ready jobs.
    pub backlog: u64,
    /// Jobs in flight.
    pub in_flight: u64,
    /// Workers running (after the decision was applied).
    pub running: u32,
    /// Workers running when the decision was taken.
    pub was_running: u32,
    /// Workers draining.
    pub draining: u32,
    /// Workers wanted.
    pub desired: u32,
    /// Measured rate per worker.
    pub rate_per_worker: Option<f64>,
    /// Time to drain.
    pub time_to_drain_s: Option<f64>,
    /// The decision's reason.
    pub reason: String,
}

/// Every model's status; `seq` grows with each tick, so a reader can tell snapshots
/// apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    /// Ticks recorded so far.
    pub seq: u64,
    /// Unix ms of the last tick.
    pub updated_ms: u64,
    /// One entry per model, in the order they were first seen.
    pub models: Vec<ModelStatus>,
}

impl Status {
    /// Records one tick of `model`.
    pub fn record(&mut self, model: &str, t: &Tick) {
        let i = match self.models.iter().position(|m| m.model == model) {
            Some(i) => i,
            None => {
                self.models.push(ModelStatus {
                    model: model.to_string(),
                    ..ModelStatus::default()
                });
                self.models.len() - 1
            }
        };
        let m = &mut self.models[i];
        let changed = m.decisions.back().is_none_or(|d| d.desired != t.desired);
        if changed {
            m.decisions.push_back(DecisionRecord {
                at_ms: t.at_ms,
                desired: t.desired,
                running: t.was_running,
                reason: t.reason.clone(),
            });
            while m.decisions.len() > DECISIONS_KEPT {
                m.decisions.pop_front();
            }
        }
        m.backlog = t.backlog;
        m.in_flight = t.in_flight;
        m.running = t.running;
        m.draining = t.draining;
        m.desired = t.desired;
        m.rate_per_worker = t.rate_per_worker;
        m.time_to_drain_s = t.time_to_drain_s;
        m.history.push_back(Point {
            at_ms: t.at_ms,
            backlog: t.backlog,
            workers: t.running + t.draining,
        });
        let oldest = t.at_ms.saturating_sub(HISTORY.as_millis() as u64);
        while m.history.front().is_some_and(|p| p.at_ms < oldest) {
            m.history.pop_front();
        }
        self.seq += 1;
        self.updated_ms = t.at_ms;
    }
}

/// The board the control loop writes and the page reads.
pub type Board = Arc<RwLock<Status>>;

/// `/` and `/api/status` over `board`.
pub fn routes(board: Board) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/status", get(api))
        .with_state(board)
}

async fn api(State(board): State<Board>) -> impl IntoResponse {
    let snapshot = match board.read() {
        Ok(g) => g.clone(),
        // Written whole under the lock: a panic elsewhere cannot leave it half-made.
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let body =
        serde_json::to_string(&snapshot).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

/// The page: a table per model and an SVG chart, drawn by inline script from
/// `/api/status` every second. Every figure carries a `data-field` attribute, so a test
/// can read the DOM and compare it with the JSON.
const PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(at_ms: u64, backlog: u64, running: u32, desired: u32) -> Tick {
        Tick {
            at_ms,
            backlog,
            in_flight: 3,
            running,
            was_running: running,
            draining: 0,
            desired,
            rate_per_worker: Some(100.0),
            time_to_drain_s: Some(1.5),
            reason: format!("want {desired}"),
        }
    }

    #[test]
    fn history_keeps_ten_minutes_and_decisions_only_changes() {
        let mut s = Status::default();
        for i in 0..1_000u64 {
            // One tick a second; the desired count changes every 100 ticks.
            s.record("m", &tick(i * 1000, i, 1, (i / 100) as u32));
        }
        let m = &s.models[0];
        assert_eq!(s.seq, 1_000);
        assert_eq!(m.history.front().map(|p| p.at_ms), Some(399_000));
        assert_eq!(m.history.len(), 601);
        assert_eq!(m.decisions.len(), 10);
        assert_eq!(m.decisions.back().map(|d| d.desired), Some(9));
        assert_eq!(m.backlog, 999);
        s.record("other", &tick(1_000_000, 0, 0, 0));
        assert_eq!(s.models.len(), 2);
        // Decisions are capped.
        for i in 0..50u64 {
            s.record("m", &tick(2_000_000 + i, 0, 0, 100 + i as u32));
        }
        assert_eq!(s.models[0].decisions.len(), DECISIONS_KEPT);
    }
}
