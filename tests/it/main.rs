//! Integration tests, in one binary so DataFusion is linked once.
//! `landing`: the library's landing API against real lakes.
//! `cli`: the real `ferry` binary end to end.
//! `cluster`: model builds on a Ballista scheduler and two executors.
//! `contract`: a destination in a few dozen lines, synced like HubSpot.
//! `extract`: extraction over HTTP against the REST emulator.
//! `fuzz`: proptest fuzz targets for every parser of user and vendor input.
//! `gtm`: the GTM starter project, `ferry demo` and `ferry generate`.
//! `models`: SQL models on the fixture project `tests/fixtures/gtm`.
//! `operate`: schedules, alerts, the health page, /metrics, `ferry serve`.
//! `s3`: the lake on an S3 API (moto on loopback) with its faults.
//! `salesforce`: reverse sync to the Salesforce emulator.
//! `sim`: the HubSpot emulator over real HTTP.
//! `sync`: reverse sync to the emulator, incl. the kill -9 crash test.
//! `vendor`: regressions against vendors as they really behave (lagging
//! search, normalized keys, lost replies, redirects, paging quirks).

mod audience;
mod cli;
mod cluster;
mod contract;
mod extract;
mod fuzz;
mod gtm;
mod landing;
mod model_rows;
mod models;
mod operate;
mod revert;
mod s3;
mod salesforce;
mod sim;
mod sync;
mod vendor;

/// Copy a folder tree (fixtures, the starter project) into a test's own folder.
/// A loopback port nothing listens on (for a process the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
