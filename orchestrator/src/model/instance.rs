//! Instances: the running replicas of a stage and their lifecycle.

use std::fmt;

use serde::Serialize;

use super::workflow::StageId;

/// One replica of one stage. `incarnation` counts restarts of the replica, so that a replica
/// restarted on another node is a new instance with the same stage and replica index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId {
    pub stage: StageId,
    pub replica: u32,
    pub incarnation: u32,
}

impl InstanceId {
    pub fn new(stage: StageId, replica: u32) -> InstanceId {
        InstanceId { stage, replica, incarnation: 0 }
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}r{}", self.stage.0, self.replica)?;
        if self.incarnation > 0 {
            write!(f, "i{}", self.incarnation)?;
        }
        Ok(())
    }
}

/// Lifecycle of an instance as the orchestrator sees it.
///
/// ```text
/// Pending -> Starting -> Running -> Draining -> Drained -> Stopped
///    \           \          \           \          \
///     `-----------`----------`-----------`----------`--> Failed
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum InstanceState {
    /// Placed on a node, not yet started.
    Pending,
    /// The backend started it; waiting for its health endpoint.
    Starting,
    Running,
    Draining,
    Drained,
    Stopped,
    Failed {
        reason: String,
    },
}

/// A state change that the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instance cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: String,
    pub to: String,
}

impl InstanceState {
    pub fn name(&self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Draining => "draining",
            InstanceState::Drained => "drained",
            InstanceState::Stopped => "stopped",
            InstanceState::Failed { .. } => "failed",
        }
    }

    /// Moves to `next` if the lifecycle allows it.
    pub fn advance(&mut self, next: InstanceState) -> Result<(), InvalidTransition> {
        use InstanceState::*;
        let allowed = match (&*self, &next) {
            (Failed { .. }, _) | (Stopped, _) => false,
            (_, Failed { .. }) | (_, Stopped) => true,
            (Pending, Starting)
            | (Starting, Running)
            | (Running, Draining)
            | (Running, Drained)
            | (Draining, Drained) => true,
            (current, next) => current == next,
        };
        if allowed {
            *self = next;
            Ok(())
        } else {
            Err(InvalidTransition { from: self.name().to_string(), to: next.name().to_string() })
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self, InstanceState::Starting | InstanceState::Running | InstanceState::Draining)
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstanceState::Failed { reason } => write!(f, "failed ({reason})"),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_allows_forward_steps() {
        let mut state = InstanceState::Pending;
        for next in [
            InstanceState::Starting,
            InstanceState::Running,
            InstanceState::Draining,
            InstanceState::Drained,
            InstanceState::Stopped,
        ] {
            state.advance(next.clone()).expect("forward step");
            assert_eq!(state, next);
        }
    }

    #[test]
    fn lifecycle_rejects_backward_steps() {
        let mut state = InstanceState::Drained;
        let error = state.advance(InstanceState::Running).unwrap_err();
        assert_eq!(error.from, "drained");
        assert_eq!(error.to, "running");
        assert_eq!(state, InstanceState::Drained);
    }

    #[test]
    fn failed_instance_stays_failed() {
        let mut state = InstanceState::Running;
        state.advance(InstanceState::Failed { reason: "exited".into() }).expect("fail");
        assert!(state.advance(InstanceState::Running).is_err());
        assert!(state.advance(InstanceState::Stopped).is_err());
    }

    #[test]
    fn instance_id_display_shows_restarts() {
        let mut id = InstanceId::new(StageId(2), 1);
        assert_eq!(id.to_string(), "s2r1");
        id.incarnation = 3;
        assert_eq!(id.to_string(), "s2r1i3");
    }
}
