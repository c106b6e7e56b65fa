//! The rollout state machine.
use crate::spec::RolloutSpec;
use crate::time::Dur;
use crate::weight::Weight;

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub weight: Weight,
    pub pause: Option<crate::spec::PauseSpec>,
    pub duration: Dur,
}
impl Step {
    pub fn plan(_r: &RolloutSpec) -> Vec<Step> {
        Vec::new()
    }
}
