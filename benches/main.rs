//! ferry's benchmarks, one binary (each of seven linked DataFusion before):
//! `cargo bench --profile dev -- <bench> [parts]`. Each module's header says
//! what it measures and which variables resize it.

mod common;

mod build;
mod cluster;
mod dbt;
mod extract;
mod landing;
mod models;
mod operate;
mod shop;
mod sync;

const BENCHES: &[(&str, &str)] = &[
    ("landing", "1M JSON records landed as Parquet"),
    (
        "extract",
        "REST pages (and static pages beside curl and dlt), webhooks, file drops, Salesforce",
    ),
    (
        "models",
        "a 20-model DAG over 1M touches; compiling 200 models",
    ),
    ("dbt", "a dbt project with a package, beside dbt-duckdb"),
    (
        "shop",
        "a jaffle-shop-shaped dbt project, model by model, beside dbt-duckdb",
    ),
    (
        "sync",
        "the sync diff at 1M and 10M rows; HubSpot and Salesforce sync throughput",
    ),
    ("build", "ferry build on the starter project at 1M contacts"),
    (
        "cluster",
        "the starter project's models in one process and on a two-executor Ballista cluster",
    ),
    (
        "operate",
        "the health page on a long history; the scheduler idle",
    ),
];

fn main() {
    ferry::allocator::configure();
    let name = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    match name.as_str() {
        "build" => build::main(),
        "cluster" => cluster::main(),
        "dbt" => dbt::main(),
        "extract" => extract::main(),
        "landing" => landing::main(),
        "models" => models::main(),
        "operate" => operate::main(),
        "shop" => shop::main(),
        "sync" => sync::main(),
        _ => {
            eprintln!("usage: cargo bench --profile dev -- <bench> [parts]\n\nbenches:");
            for (name, what) in BENCHES {
                eprintln!("  {name:<9} {what}");
            }
            if !name.is_empty() {
                eprintln!("\nno bench named {name:?}");
                std::process::exit(2);
            }
        }
    }
}
