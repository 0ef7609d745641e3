//! The scheduler core of a run (filled in next).
#[derive(Debug)]
pub struct RunState;
#[derive(Debug)]
pub struct Schedule;
#[derive(Debug)]
pub struct StepState;
#[derive(Debug)]
pub enum StepStatus {}
pub fn schedule() {}
