//! Operating ferry unattended: schedules ([`schedule`]), alerts by
//! severity ([`alerts`]), and the integration health page ([`health`]).
//! `ferry serve` runs them; `ferry schedules` and `ferry health` read them.

pub mod alerts;
pub mod health;
pub mod schedule;
