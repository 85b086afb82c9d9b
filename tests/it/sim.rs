//! The HubSpot emulator over real HTTP: shapes, status codes, limits, faults.

use ferry::sim::hubspot::{self, Faults, RunningSim, SimConfig};
use serde_json::{Value, json};

const TOKEN: &str = "test-token";

async fn sim(config: SimConfig) -> RunningSim {
    hubspot::start(
        SimConfig {
            token: TOKEN.into(),
            ..config
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

async fn call(
    s: &RunningSim,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let c = reqwest::Client::new();
    let url = format!("{}{path}", s.base_url());
    let req = match method {
        "GET" => c.get(url),
        _ => c.post(url),
    }
    .bearer_auth(TOKEN);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, headers, v)
}

fn contact(email: &str) -> Value {
    json!({"id": email, "idProperty": "email", "properties": {"email": email, "firstname": "A"}})
}

#[tokio::test]
async fn upsert_creates_then_updates_by_unique_email() {
    let s = sim(SimConfig::default()).await;
    let (st, h, v) = call(
        &s,
        "POST",
        "/crm/v3/objects/contacts/batch/upsert",
        Some(json!({"inputs": [contact("a@x.io"), contact("b@x.io")]})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["status"], "COMPLETE");
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["new"] == true)
    );
    assert_eq!(h["x-hubspot-ratelimit-max"], "100");
    assert_eq!(h["x-hubspot-ratelimit-interval-milliseconds"], "10000");
    let mut again = contact("A@x.io");
    again["properties"]["firstname"] = json!("Ana");
    let (_, _, v) = call(
        &s,
        "POST",
        "/crm/v3/objects/contacts/batch/upsert",
        Some(json!({"inputs": [again]})),
    )
    .await;
    assert_eq!(v["results"][0]["new"], false);
    let recs = s.records("contacts");
    assert_eq!(recs.len(), 2, "no duplicate for a differently-cased email");
    assert_eq!(recs[0].properties["firstname"], "Ana");
    // domain is not unique on companies: upsert by it is refused.
    let (st, _, v) = call(
        &s,
        "POST",
        "/crm/v3/objects/companies/batch/upsert",
        Some(json!({"inputs": [{"id": "x.io", "idProperty": "domain", "properties": {}}]})),
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("not a unique property")
    );
}

#[tokio::test]
async fn whole_batch_errors_partial_errors_and_conflicts() {
    let s = sim(SimConfig::default()).await;
    let (st, _, v) = call(
        &s,
        "POST",
        "/crm/v3/objects/contacts/batch/create",
        Some(json!({"inputs": [{"properties": {"email": "a@x.io", "shoe_size": "9"}}]})),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(v["category"], "VALIDATION_ERROR");
    assert_eq!(v["errors"][0]["code"], "PROPERTY_DOESNT_EXIST");
    assert!(v["correlationId"].is_string());
    let (st, _, v) = call(
        &s,
        "POST",
        "/crm/v3/objects/contacts/batch/create",
        Some(json!({"inputs": [{"properties": {"email": "not-an-email"}}]})),
    )
    .await;
    assert_eq!(
        (st, v["errors"][0]["code"].as_str()),
        (400, Some("INVALID_EMAIL"))
    );
    let (st, _, v) = call(
        &s,
        "POST",
        "/crm/v3/objects/contacts/batch/create",
        Some(json!({"inputs": [{"properties": {"email": "a@x.io"}}]})),
    )
    .await;
    assert_eq!(st, 201);
    let id = v["results"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(v["results"][0]["properties"]["email"], "a@x.io");
    let (st, _, v) = call(
        &s,
        "POST",
        "/crm/v3/objects/contacts/batch/create",
        Some(json!({"inputs": [{"properties": {"email": "a@x.io"}}]})),
    )
    .await;
    assert_eq!(st, 409);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(&format!("Existing ID: {id}"))
    );
    let (st, _, v) = call(&s, "POST", "/crm/v3/objects/contacts/batch/update", Some(json!({"inputs": [{"id": id, "properties": {"jobtitle": "CTO"}}, {"id": "999999", "properties": {"jobtitle": "x"}}]}))).await;
    assert_eq!(st, 207);
    assert_eq!(v["numErrors"], 1);
    assert_eq!(v["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(v["results"][0]["id"], id.as_str());
    let inputs: Vec<Value> = (0..101).map(|i| contact(&format!("u{i}@x.io"))).collect();
    let (st, _, _) = call(
        &s,
        "POST",
        "/crm/v3/objects/contacts/batch/upsert",
        Some(json!({"inputs": inputs})),
    )
    .await;
    assert_eq!(st, 400, "more than 100 inputs");
    let (st, _, v) = call(
        &s,
        "POST",
        "/crm/v3/objects/contacts/batch/archive",
        Some(json!({"inputs": [{"id": id}]})),
    )
    .await;
    assert_eq!((st, v), (204, Value::Null));
    assert!(s.records("contacts").is_empty());
}

#[tokio::test]
async fn list_pages_with_after_and_search_caps_at_10000() {
    let s = sim(SimConfig::default()).await;
    for chunk in 0..3 {
        let inputs: Vec<Value> = (0..100)
            .map(|i| contact(&format!("c{}@x.io", chunk * 100 + i)))
            .collect();
        call(
            &s,
            "POST",
            "/crm/v3/objects/contacts/batch/upsert",
            Some(json!({"inputs": inputs})),
        )
        .await;
    }
    let mut seen = 0;
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let (st, _, v) = call(
            &s,
            "GET",
            &format!("/crm/v3/objects/contacts?limit=100&properties=email&after={after}"),
            None,
        )
        .await;
        assert_eq!(st, 200);
        seen += v["results"].as_array().unwrap().len();
        pages += 1;
        match v["paging"]["next"]["after"].as_str() {
            Some(a) => after = a.to_string(),
            None => break,
        }
    }
    assert_eq!((seen, pages), (300, 3));
    let q = json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "CONTAINS_TOKEN", "value": "c1"}]}], "limit": 5});
    // Search lags writes (list above saw them at once): nothing yet.
    let (st, _, v) = call(
        &s,
        "POST",
        "/crm/v3/objects/contacts/search",
        Some(q.clone()),
    )
    .await;
    assert_eq!((st, v["total"].clone()), (200, json!(0)));
    tokio::time::sleep(SimConfig::default().search_lag + std::time::Duration::from_millis(100))
        .await;
    let (st, h, v) = call(&s, "POST", "/crm/v3/objects/contacts/search", Some(q)).await;
    assert_eq!(st, 200);
    assert_eq!(v["total"], 1);
    assert!(
        h.get("x-hubspot-ratelimit-remaining").is_none(),
        "search replies carry no rate-limit headers"
    );
    let q = json!({"filterGroups": [], "limit": 100, "after": "9950"});
    let (st, _, v) = call(&s, "POST", "/crm/v3/objects/contacts/search", Some(q)).await;
    assert_eq!(st, 400);
    assert!(v["message"].as_str().unwrap().contains("10,000"));
}

#[tokio::test]
async fn limits_answer_hubspots_429_bodies() {
    let s = sim(SimConfig {
        ten_secondly: 3,
        ..SimConfig::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            call(&s, "GET", "/crm/v3/objects/contacts", None).await.0,
            200
        );
    }
    let (st, _, v) = call(&s, "GET", "/crm/v3/objects/contacts", None).await;
    assert_eq!(st, 429);
    assert_eq!(v["policyName"], "TEN_SECONDLY_ROLLING");
    assert_eq!(v["errorType"], "RATE_LIMIT");
    let s = sim(SimConfig {
        daily: 1,
        ..SimConfig::default()
    })
    .await;
    let (_, h, _) = call(&s, "GET", "/crm/v3/objects/contacts", None).await;
    assert_eq!(h["x-hubspot-ratelimit-daily-remaining"], "0");
    let (st, _, v) = call(&s, "GET", "/crm/v3/objects/contacts", None).await;
    assert_eq!((st, v["policyName"].as_str()), (429, Some("DAILY")));
    assert_eq!(s.stats().1, 1);
}

#[tokio::test]
async fn auth_and_injected_faults() {
    let s = sim(SimConfig::default()).await;
    let r = reqwest::Client::new()
        .get(format!("{}/crm/v3/objects/contacts", s.base_url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["category"], "INVALID_AUTHENTICATION");

    let s = sim(SimConfig {
        faults: Faults {
            server_error: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    assert_eq!(
        call(&s, "GET", "/crm/v3/objects/contacts", None).await.0,
        502
    );
    let s = sim(SimConfig {
        faults: Faults {
            rate_limited: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    assert_eq!(
        call(&s, "GET", "/crm/v3/objects/contacts", None).await.0,
        429
    );
    let s = sim(SimConfig {
        faults: Faults {
            dropped: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let r = reqwest::Client::new()
        .get(format!("{}/crm/v3/objects/contacts", s.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await;
    let failed = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(failed, "a dropped connection must fail the client's read");
}

#[test]
fn the_binary_serves_the_emulator() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["sim", "hubspot", "--port", "0", "--token", TOKEN])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{url}/crm/v3/properties/contacts"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
}
