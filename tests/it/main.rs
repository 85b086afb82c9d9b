//! Integration tests, in one binary so DataFusion is linked once.
//! `landing`: the library's landing API against real lakes.
//! `cli`: the real `ferry` binary end to end.
//! `extract`: extraction over HTTP against the REST emulator.
//! `gtm`: the GTM starter project, `ferry demo` and `ferry generate`.
//! `models`: SQL models on the fixture project `tests/fixtures/gtm`.
//! `sim`: the HubSpot emulator over real HTTP.
//! `sync`: reverse sync to the emulator, incl. the kill -9 crash test.

mod cli;
mod extract;
mod gtm;
mod landing;
mod models;
mod sim;
mod sync;
