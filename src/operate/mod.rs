//! Operating ferry unattended: schedules, alerts, the health page.
