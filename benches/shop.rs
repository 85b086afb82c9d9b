//! Benchmark: a jaffle-shop-shaped dbt project, model by model, run by
//! `ferry run` and by `dbt run` on dbt-duckdb over the same Parquet files.
//!
//! The data has the shapes of jafgen's (the generator of dbt Labs' public
//! jaffle-shop example), written here: string UUID keys, six stores opening
//! over the years, ten products (jaffles and beverages), 65 supplies, about
//! 1.49 items per order (some orders have none), customers ordering many
//! times. FERRY_BENCH_ROWS orders (default 660,000, with about 983,000
//! items: the size issue 16 measured); one customer per 330 orders (2,000),
//! as in jafgen's output between its first and sixth year (931 customers for
//! 73k orders, 3,102 for 2.3M).
//!
//! The project's models have the shapes of jaffle-shop's marts: six staging
//! views, then `order_items` (items joined to orders, products and a supply
//! cost per product), `orders` (items summed per order, joined back, and a
//! `row_number()` of each customer's orders), `customers` (a
//! `count(distinct)` per customer joined to customers), and the small
//! `products`, `supplies`, `locations`. Both tools run one model at a time
//! (`--threads 1`; each engine still uses every core within a model), so
//! each model's time is its own, writing its table included; the times come
//! from `ferry.model_runs` and dbt's `target/run_results.json`.
//!
//! Run: `cargo bench --profile dev -- shop`. With dbt-duckdb installed
//! (see the dbt bench), set FERRY_BENCH_DBT=/tmp/dbt/bin/dbt to run dbt too;
//! the two tools' results are then compared. FERRY_BENCH_KEEP=DIR keeps the
//! project there (for `ferry query "explain analyze ..."`; DIR is emptied
//! first).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use ferry::lake::{Lake, Lander, RunId, StreamRef};
use ferry::project::StreamOptions;

use crate::dbt::{compare, duckdb_csv, timed, write};

const MODELS: &[(&str, &str)] = &[
    (
        "staging/stg_customers.sql",
        "select\n    id as customer_id,\n    name as customer_name\nfrom {{ source('ecom', 'raw_customers') }}\n",
    ),
    (
        "staging/stg_locations.sql",
        "select\n    id as location_id,\n    name as location_name,\n    tax_rate,\n    {{ dbt.date_trunc('day', 'cast(opened_at as timestamp)') }} as opened_date\nfrom {{ source('ecom', 'raw_stores') }}\n",
    ),
    (
        "staging/stg_orders.sql",
        "select\n    id as order_id,\n    store_id as location_id,\n    customer as customer_id,\n    subtotal as subtotal_cents,\n    tax_paid as tax_paid_cents,\n    order_total as order_total_cents,\n    {{ cents_to_dollars('subtotal') }} as subtotal,\n    {{ cents_to_dollars('tax_paid') }} as tax_paid,\n    {{ cents_to_dollars('order_total') }} as order_total,\n    {{ dbt.date_trunc('day', 'cast(ordered_at as timestamp)') }} as ordered_at\nfrom {{ source('ecom', 'raw_orders') }}\n",
    ),
    (
        "staging/stg_order_items.sql",
        "select\n    id as order_item_id,\n    order_id,\n    sku as product_id\nfrom {{ source('ecom', 'raw_items') }}\n",
    ),
    (
        "staging/stg_products.sql",
        "select\n    sku as product_id,\n    name as product_name,\n    type as product_type,\n    description as product_description,\n    {{ cents_to_dollars('price') }} as product_price,\n    coalesce(type = 'jaffle', false) as is_food_item,\n    coalesce(type = 'beverage', false) as is_drink_item\nfrom {{ source('ecom', 'raw_products') }}\n",
    ),
    (
        "staging/stg_supplies.sql",
        "select\n    {{ fixture_utils.surrogate_key(['id', 'sku']) }} as supply_uuid,\n    id as supply_id,\n    sku as product_id,\n    name as supply_name,\n    {{ cents_to_dollars('cost') }} as supply_cost,\n    perishable as is_perishable_supply\nfrom {{ source('ecom', 'raw_supplies') }}\n",
    ),
    (
        "marts/order_items.sql",
        "with supply_costs as (\n    select product_id, sum(supply_cost) as supply_cost\n    from {{ ref('stg_supplies') }}\n    group by product_id\n)\nselect\n    i.*,\n    o.ordered_at,\n    p.product_name,\n    p.product_price,\n    p.is_food_item,\n    p.is_drink_item,\n    s.supply_cost\nfrom {{ ref('stg_order_items') }} i\nleft join {{ ref('stg_orders') }} o on o.order_id = i.order_id\nleft join {{ ref('stg_products') }} p on p.product_id = i.product_id\nleft join supply_costs s on s.product_id = i.product_id\n",
    ),
    (
        "marts/orders.sql",
        "with per_order as (\n    select\n        order_id,\n        sum(supply_cost) as order_cost,\n        sum(product_price) as order_items_subtotal,\n        count(order_item_id) as count_order_items,\n        sum(case when is_food_item then 1 else 0 end) as count_food_items,\n        sum(case when is_drink_item then 1 else 0 end) as count_drink_items\n    from {{ ref('order_items') }}\n    group by order_id\n),\nflagged as (\n    select\n        o.*,\n        p.order_cost,\n        p.order_items_subtotal,\n        p.count_food_items,\n        p.count_drink_items,\n        p.count_order_items,\n        p.count_food_items > 0 as is_food_order,\n        p.count_drink_items > 0 as is_drink_order\n    from {{ ref('stg_orders') }} o\n    join per_order p on p.order_id = o.order_id\n)\nselect\n    *,\n    row_number() over (partition by customer_id order by ordered_at, order_id) as customer_order_number\nfrom flagged\n",
    ),
    (
        "marts/customers.sql",
        "with per_customer as (\n    select\n        customer_id,\n        count(distinct order_id) as count_lifetime_orders,\n        count(distinct order_id) > 1 as is_repeat_buyer,\n        min(ordered_at) as first_ordered_at,\n        max(ordered_at) as last_ordered_at,\n        sum(subtotal) as lifetime_spend_pretax,\n        sum(tax_paid) as lifetime_tax_paid,\n        sum(order_total) as lifetime_spend\n    from {{ ref('orders') }}\n    where customer_id is not null and order_id is not null\n    group by customer_id\n)\nselect\n    c.*,\n    s.count_lifetime_orders,\n    s.first_ordered_at,\n    s.last_ordered_at,\n    s.lifetime_spend_pretax,\n    s.lifetime_tax_paid,\n    s.lifetime_spend,\n    case when s.is_repeat_buyer then 'returning' else 'new' end as customer_type\nfrom {{ ref('stg_customers') }} c\nleft join per_customer s on s.customer_id = c.customer_id\n",
    ),
    (
        "marts/products.sql",
        "select * from {{ ref('stg_products') }}\n",
    ),
    (
        "marts/supplies.sql",
        "select * from {{ ref('stg_supplies') }}\n",
    ),
    (
        "marts/locations.sql",
        "select * from {{ ref('stg_locations') }}\n",
    ),
];

fn project(dir: &Path) {
    write(
        dir,
        "dbt_project.yml",
        "name: 'shop'\nversion: '1.0.0'\nconfig-version: 2\nprofile: 'shop'\n\
         models:\n  shop:\n    staging:\n      +materialized: view\n    marts:\n      +materialized: table\n",
    );
    write(
        dir,
        "profiles.yml",
        "shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: target/shop.duckdb\n      threads: 1\n",
    );
    let lake = dir.join("lake").display().to_string();
    write(
        dir,
        "models/staging/sources.yml",
        &format!(
            "version: 2\nsources:\n  - name: ecom\n    meta:\n      external_location: \"read_parquet('{lake}/raw/ecom/{{name}}/**/*.parquet', hive_partitioning = false)\"\n    tables:\n      - name: raw_customers\n      - name: raw_orders\n      - name: raw_items\n      - name: raw_products\n      - name: raw_supplies\n      - name: raw_stores\n"
        ),
    );
    write(
        dir,
        "macros/cents_to_dollars.sql",
        "{% macro cents_to_dollars(column_name) -%}\n    cast({{ column_name }} / 100.0 as decimal(16, 2))\n{%- endmacro %}\n",
    );
    for (path, sql) in MODELS {
        write(dir, &format!("models/{path}"), sql);
    }
    crate::dbt::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dbt_packages/dbt_packages/fixture_utils"),
        &dir.join("dbt_packages/fixture_utils"),
    );
}

/// splitmix64: the bench's data is the same on every run.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A version-4-looking UUID for entity `i` of `kind`, as jafgen's keys.
fn uuid(kind: u64, i: u64) -> String {
    let a = mix(kind << 40 ^ i);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

const STORES: [(&str, &str, f64); 6] = [
    ("Harbor", "2018-09-01T00:00:00", 0.06),
    ("Ridge", "2019-03-12T00:00:00", 0.04),
    ("Mill", "2020-04-28T00:00:00", 0.0625),
    ("Bay", "2020-05-08T00:00:00", 0.075),
    ("Levee", "2021-03-09T00:00:00", 0.04),
    ("Canyon", "2021-09-12T00:00:00", 0.08),
];
/// (sku, name, type, price in cents); beverages are most of the items.
const PRODUCTS: [(&str, &str, &str, i64); 10] = [
    ("JAF-001", "hazelnut jaffle", "jaffle", 1100),
    ("JAF-002", "stew jaffle", "jaffle", 1100),
    ("JAF-003", "sausage jaffle", "jaffle", 1200),
    ("JAF-004", "pork jaffle", "jaffle", 1400),
    ("JAF-005", "bun jaffle", "jaffle", 1200),
    ("BEV-001", "mango smoothie", "beverage", 600),
    ("BEV-002", "chai latte", "beverage", 500),
    ("BEV-003", "iced coffee", "beverage", 600),
    ("BEV-004", "pourover", "beverage", 700),
    ("BEV-005", "lime agua fresca", "beverage", 400),
];
/// Items per order, as jafgen's: (count, weight out of 1,000); 7 in 1,000
/// orders have none.
const ITEMS: [(u64, u64); 9] = [
    (0, 7),
    (1, 717),
    (2, 190),
    (3, 40),
    (4, 19),
    (5, 6),
    (6, 7),
    (8, 8),
    (10, 6),
];

fn batch(fields: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let schema = Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(schema, fields.into_iter().map(|(_, a)| a).collect()).unwrap()
}

fn strings(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn small_tables() -> [(&'static str, RecordBatch); 3] {
    let stores = batch(vec![
        ("id", strings((0..6).map(|i| uuid(1, i)).collect())),
        (
            "name",
            strings(STORES.iter().map(|s| s.0.to_string()).collect()),
        ),
        (
            "opened_at",
            strings(STORES.iter().map(|s| s.1.to_string()).collect()),
        ),
        (
            "tax_rate",
            Arc::new(Float64Array::from_iter_values(STORES.iter().map(|s| s.2))),
        ),
    ]);
    let products = batch(vec![
        (
            "sku",
            strings(PRODUCTS.iter().map(|p| p.0.to_string()).collect()),
        ),
        (
            "name",
            strings(PRODUCTS.iter().map(|p| p.1.to_string()).collect()),
        ),
        (
            "type",
            strings(PRODUCTS.iter().map(|p| p.2.to_string()).collect()),
        ),
        (
            "price",
            Arc::new(Int64Array::from_iter_values(PRODUCTS.iter().map(|p| p.3))),
        ),
        (
            "description",
            strings(
                PRODUCTS
                    .iter()
                    .map(|p| format!("the house {}", p.1))
                    .collect(),
            ),
        ),
    ]);
    // 65 rows: the four shared supplies for every product, then 2-5 of the
    // product's own; a supply id repeats across products, as jafgen's do.
    let (mut id, mut name, mut cost, mut perishable, mut sku) =
        (vec![], vec![], vec![], vec![], vec![]);
    let own = [3u64, 3, 5, 5, 4, 1, 2, 1, 0, 1];
    for (p, product) in PRODUCTS.iter().enumerate() {
        for s in 0..4 + own[p] {
            let n = if s < 4 { s } else { 4 + p as u64 * 5 + s };
            id.push(format!("SUP-{:03}", n + 1));
            name.push(format!("supply {}", n + 1));
            cost.push(4 + (mix(n) % 160) as i64);
            perishable.push(s >= 4);
            sku.push(product.0.to_string());
        }
    }
    assert_eq!(id.len(), 65);
    let supplies = batch(vec![
        ("id", strings(id)),
        ("name", strings(name)),
        ("cost", Arc::new(Int64Array::from(cost))),
        ("perishable", Arc::new(BooleanArray::from(perishable))),
        ("sku", strings(sku)),
    ]);
    [
        ("raw_stores", stores),
        ("raw_products", products),
        ("raw_supplies", supplies),
    ]
}

/// Orders `start..start + n` of `total` and their items. Orders come in
/// time order over six years from 2018-09-01; a store sells once it has
/// opened; a few customers order far more often than most.
fn orders(start: u64, n: u64, total: u64, customers: u64) -> (RecordBatch, RecordBatch) {
    let t0 = chrono::NaiveDate::from_ymd_opt(2018, 9, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let span = 6 * 365 * 86_400 / 60; // minutes
    let opened: Vec<chrono::NaiveDateTime> = STORES
        .iter()
        .map(|s| chrono::NaiveDateTime::parse_from_str(s.1, "%Y-%m-%dT%H:%M:%S").unwrap())
        .collect();
    let (mut id, mut customer, mut at, mut store) = (vec![], vec![], vec![], vec![]);
    let (mut subtotal, mut tax, mut total_col) = (vec![], vec![], vec![]);
    let (mut item_id, mut item_order, mut item_sku) = (vec![], vec![], vec![]);
    for o in start..start + n {
        let h = mix(o);
        let when = t0 + chrono::Duration::minutes((o * span / total) as i64);
        let open = opened.iter().take_while(|d| **d <= when).count().max(1) as u64;
        let s = (h % open) as usize;
        // Skewed: the product of two uniform draws favours low ids.
        let c = ((h >> 8) % customers) * ((h >> 24) % customers) / customers;
        let order_id = uuid(2, o);
        let pick = (h >> 40) % 1000;
        let mut acc = 0;
        let count = ITEMS
            .iter()
            .find(|(_, w)| {
                acc += w;
                pick < acc
            })
            .map_or(1, |(c, _)| *c);
        let mut sum = 0;
        for k in 0..count {
            let hk = mix(h ^ (k + 1));
            // 78% beverages, as jafgen's items.
            let p = if hk % 100 < 78 {
                5 + (hk >> 8) % 5
            } else {
                (hk >> 8) % 5
            } as usize;
            sum += PRODUCTS[p].3;
            item_id.push(uuid(3, o * 16 + k));
            item_order.push(order_id.clone());
            item_sku.push(PRODUCTS[p].0.to_string());
        }
        let t = (sum as f64 * STORES[s].2).round() as i64;
        id.push(order_id);
        customer.push(uuid(4, c));
        at.push(when.format("%Y-%m-%dT%H:%M:%S").to_string());
        store.push(uuid(1, s as u64));
        subtotal.push(sum);
        tax.push(t);
        total_col.push(sum + t);
    }
    let orders = batch(vec![
        ("id", strings(id)),
        ("customer", strings(customer)),
        ("ordered_at", strings(at)),
        ("store_id", strings(store)),
        ("subtotal", Arc::new(Int64Array::from(subtotal))),
        ("tax_paid", Arc::new(Int64Array::from(tax))),
        ("order_total", Arc::new(Int64Array::from(total_col))),
    ]);
    let items = batch(vec![
        ("id", strings(item_id)),
        ("order_id", strings(item_order)),
        ("sku", strings(item_sku)),
    ]);
    (orders, items)
}

fn customers(n: u64) -> RecordBatch {
    batch(vec![
        ("id", strings((0..n).map(|i| uuid(4, i)).collect())),
        (
            "name",
            strings((0..n).map(|i| format!("Customer {i}")).collect()),
        ),
    ])
}

/// The figures both tools must agree on.
const CHECK: &str = "select \
    (select count(*) from order_items) as items, \
    (select round(cast(sum(supply_cost) as double), 2) from order_items) as items_supply_cost, \
    (select count(*) from orders) as orders, \
    (select round(cast(sum(order_cost) as double), 2) from orders) as order_cost, \
    (select sum(count_food_items) from orders) as food_items, \
    (select sum(case when is_drink_order then 1 else 0 end) from orders) as drink_orders, \
    (select sum(customer_order_number * count_order_items) from orders) as weighted_order_numbers, \
    (select count(*) from customers) as customers, \
    (select sum(count_lifetime_orders) from customers) as lifetime_orders, \
    (select round(cast(sum(lifetime_spend) as double), 2) from customers) as lifetime_spend, \
    (select count(*) from customers where customer_type = 'returning') as returning";

const MARTS: [&str; 6] = [
    "order_items",
    "orders",
    "customers",
    "products",
    "supplies",
    "locations",
];

fn csv_rows(text: &str) -> BTreeMap<String, f64> {
    text.trim()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(',')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

pub fn main() {
    let rows: u64 = std::env::var("FERRY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(660_000);
    let keep = std::env::var_os("FERRY_BENCH_KEEP").map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let dir = keep.clone().unwrap_or_else(|| tmp.path().join("shop"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    project(&dir);
    let n_customers = (rows / 330).max(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let items = rt.block_on(async {
        let lake = Lake::from_url("lake", &dir, &BTreeMap::new()).unwrap();
        let lander = Lander::new(lake.clone(), RunId::new());
        let land = |name: &str, batches: Vec<RecordBatch>| {
            let lander = lander.clone();
            let stream = StreamRef::parse(&format!("ecom.{name}")).unwrap();
            async move {
                lander
                    .land_batches(&stream, StreamOptions::default(), batches)
                    .await
                    .unwrap();
            }
        };
        let chunk = 100_000;
        let (mut o, mut i) = (vec![], vec![]);
        for s in (0..rows).step_by(chunk) {
            let (a, b) = orders(s, (chunk as u64).min(rows - s), rows, n_customers);
            o.push(a);
            i.push(b);
        }
        let items: usize = i.iter().map(|b| b.num_rows()).sum();
        land("raw_orders", o).await;
        land("raw_items", i).await;
        land("raw_customers", vec![customers(n_customers)]).await;
        for (name, b) in small_tables() {
            land(name, vec![b]).await;
        }
        items
    });
    println!(
        "jaffle-shop-shaped dbt project: 6 staging views, 6 marts; {rows} orders, {items} items, {n_customers} customers"
    );

    let ferry_bin = env!("CARGO_BIN_EXE_ferry");
    let (secs, mib, ok, log) = timed(&dir, &[ferry_bin, "run", "--threads", "1"]);
    assert!(ok, "ferry run failed:\n{log}");
    let (_, _, ok, times) = timed(
        &dir,
        &[
            ferry_bin,
            "query",
            "select model, seconds from ferry.model_runs order by model",
            "--format",
            "csv",
        ],
    );
    assert!(ok, "{times}");
    let ferry_times = csv_rows(&times);
    let (_, _, ok, ferry_check) = timed(&dir, &[ferry_bin, "query", CHECK, "--format", "csv"]);
    assert!(ok, "{ferry_check}");

    let dbt = std::env::var_os("FERRY_BENCH_DBT").map(|d| d.to_string_lossy().to_string());
    let mut dbt_times = BTreeMap::new();
    let mut dbt_total = None;
    let mut dbt_check = String::new();
    if let Some(dbt) = &dbt {
        let (dsecs, dmib, ok, log) = timed(
            &dir,
            &[
                dbt,
                "run",
                "--threads",
                "1",
                "--profiles-dir",
                ".",
                "--project-dir",
                ".",
            ],
        );
        assert!(ok, "dbt run failed:\n{log}");
        dbt_total = Some((dsecs, dmib));
        let python = Path::new(dbt).with_file_name("python");
        let py = python.to_str().unwrap();
        let (_, _, ok, out) = timed(
            &dir,
            &[
                py,
                "-c",
                "import json\nfor r in json.load(open('target/run_results.json'))['results']:\n    print(r['unique_id'].split('.')[-1] + ',' + str(r['execution_time']))\n",
            ],
        );
        assert!(ok, "{out}");
        dbt_times = csv_rows(&format!("model,seconds\n{out}"));
        dbt_check = duckdb_csv(&dir, dbt, "target/shop.duckdb", CHECK);
    }

    println!("\n| model | ferry | dbt-duckdb | ferry / DuckDB |\n|---|---|---|---|");
    for m in MARTS {
        let f = ferry_times.get(m).copied().unwrap_or(f64::NAN);
        match dbt_times.get(m) {
            Some(d) => println!("| {m} | {f:.2} s | {d:.2} s | {:.2} |", f / d),
            None => println!("| {m} | {f:.2} s | — | — |"),
        }
    }
    println!("\nferry run --threads 1        {secs:>7.2} s  peak {mib:>7.1} MiB");
    if let Some((s, m)) = dbt_total {
        println!("dbt run --threads 1          {s:>7.2} s  peak {m:>7.1} MiB");
    }
    println!("ferry's figures:\n{}", ferry_check.trim());
    if dbt.is_none() {
        println!("(set FERRY_BENCH_DBT to a dbt with dbt-duckdb to compare model by model)");
        return;
    }
    println!("dbt-duckdb's figures:\n{}", dbt_check.trim());
    println!("results: {}", compare(&ferry_check, &dbt_check));
}
