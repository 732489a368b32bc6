//! A circuit breaker per agent type: after `failures` consecutive failed provider calls it
//! opens, so a dead provider costs nothing per message; after the cool-down one probe call
//! goes through (half-open), and its outcome closes or re-opens it.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

pub struct Breaker {
    state: Mutex<State>,
    failures: u32,
    cooldown: Duration,
}

/// What the breaker says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Call,
    /// The one probe after the cool-down.
    Probe,
    Refused,
}

impl Breaker {
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            failures: failures.max(1),
            cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn permit(&self) -> Permit {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Permit::Call,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen { probing: true };
                Permit::Probe
            }
            State::Open { .. } | State::HalfOpen { probing: true } => Permit::Refused,
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Permit::Probe
            }
        }
    }

    pub fn success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// Records a failed call; true when this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let mut state = self.lock();
        let open = State::Open {
            until: Instant::now() + self.cooldown,
        };
        match *state {
            State::Closed { failures } if failures + 1 >= self.failures => {
                *state = open;
                true
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::HalfOpen { .. } | State::Open { .. } => {
                *state = open;
                true
            }
        }
    }

    /// 0 closed, 1 open, 0.5 half-open (the gauge's value).
    pub fn level(&self) -> f64 {
        match *self.lock() {
            State::Closed { .. } => 0.0,
            State::Open { .. } => 1.0,
            State::HalfOpen { .. } => 0.5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_then_lets_one_probe_through() {
        let b = Breaker::new(2, Duration::ZERO);
        assert_eq!(b.permit(), Permit::Call);
        assert!(!b.failure());
        assert!(b.failure(), "the second failure opens it");
        assert_eq!(b.permit(), Permit::Probe, "cool-down of zero: one probe");
        assert_eq!(b.permit(), Permit::Refused, "only one probe at a time");
        assert!(b.failure(), "a failed probe re-opens it");
        assert_eq!(b.permit(), Permit::Probe);
        b.success();
        assert_eq!(b.permit(), Permit::Call);
        let b = Breaker::new(1, Duration::from_secs(3600));
        b.failure();
        assert_eq!(b.permit(), Permit::Refused, "open during the cool-down");
    }
}
